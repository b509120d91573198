export {
  buildStageGraph,
  buildStageModel,
  IO,
  layerIO,
  type StageGraphOptions,
  validateStageSpec,
} from './llama-graph';
export { type ExternalModel, FloatAttr, GraphBuilder, type Tensor } from './onnx';
export { Message } from './protobuf';
export { ropeTables } from './rope';
