export { buildStageGraph, IO, layerIO, type StageGraphOptions, validateStageSpec } from './llama-graph';
export { FloatAttr, GraphBuilder, type Tensor } from './onnx';
export { Message } from './protobuf';
export { ropeTables } from './rope';
