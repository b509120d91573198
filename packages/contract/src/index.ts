/**
 * The one home of everything the API and the worker exchange through Redis: queue names, key names,
 * the job payload, stream events, usage records and quota settlement. Both sides import from here.
 */

export * from './admin';
export * from './api-keys';
export * from './events';
export * from './job';
export * from './keys';
export * from './metrics';
export * from './progress';
export * from './prompts';
export * from './quota';
export * from './scripts';
export * from './usage';
