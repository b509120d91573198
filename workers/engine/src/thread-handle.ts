/**
 * The handle on one request/reply worker thread that runs ORT sessions (a pipeline stage's, or a batched
 * stage's): numbered requests answered by `out` or `error` replies, a `ready` handshake after setup, and
 * a close that lets the thread exit by itself. Both stage handles (decode/worker-stage.ts,
 * schedule/stage-thread.ts) are this plus their own messages.
 *
 * Never terminate(): tearing a thread down inside session.run() aborts the whole process. An idle thread
 * does not keep the process alive (a CLI that forgets close() still exits, and exiting is safe while no
 * run is in flight); one with requests pending, starting or closing does, so the process can never exit
 * under a thread inside run().
 */
import type { Worker } from 'node:worker_threads';
import { spawnModuleWorker } from './threads';

/** The replies every such thread sends (its `out` carries its own fields). */
export type ThreadReply<Out extends { type: 'out'; id: number }> =
  | { type: 'ready'; device: string }
  | Out
  | { type: 'error'; id?: number; message: string }
  | { type: 'closed' };

export class ThreadHandle<ToThread extends { type: string }, Out extends { type: 'out'; id: number }> {
  /** The device the thread's sessions really run on (cpu after a fallback). */
  device = 'cpu';
  private readonly worker: Worker;
  private readonly pending = new Map<number, { resolve: (r: Out) => void; reject: (e: Error) => void }>();
  private nextId = 0;
  private exited = false;
  private ready?: { resolve: () => void; reject: (e: Error) => void };
  private readonly readyPromise: Promise<void>;
  private closed?: Promise<void>;
  private readonly exitListeners: ((err: Error) => void)[] = [];

  constructor(
    entry: URL,
    /** What the thread is, for errors ("stage thread [0, 6)"). */
    readonly name: string,
    private readonly closeMessage: ToThread,
  ) {
    this.readyPromise = new Promise<void>((resolve, reject) => {
      this.ready = { resolve, reject };
    });
    this.readyPromise.catch(() => {}); // a thread that dies before anyone waits must not be unhandled
    this.worker = spawnModuleWorker(entry);
    this.worker.on('message', (msg: ThreadReply<Out>) => this.onMessage(msg));
    this.worker.on('error', (err) => this.failAll(err));
    this.worker.on('exit', (code) => {
      this.exited = true;
      const err = new Error(`${name} exited (code ${code})`);
      this.failAll(err);
      if (!this.closed) for (const l of this.exitListeners) l(err);
    });
  }

  /** True until the thread exits or close() is called. */
  get open(): boolean {
    return !this.exited && !this.closed;
  }

  /** Called once if the thread exits without close() (a crash): its owner replaces it. */
  onUnexpectedExit(listener: (err: Error) => void): void {
    this.exitListeners.push(listener);
  }

  /** Waits for the thread's `ready` (or its setup error); closes it on failure. */
  protected async started(): Promise<void> {
    try {
      await this.readyPromise;
      this.keepAlive();
    } catch (err) {
      await this.close();
      throw err;
    }
  }

  /** Posts a fire-and-forget message (dropped once the thread is closed). */
  protected send(msg: ToThread, transfer: ArrayBuffer[] = []): void {
    if (this.open) this.worker.postMessage(msg, transfer);
  }

  /** Posts the message `make(id)` and resolves with the thread's `out` reply to that id. */
  protected request(make: (id: number) => ToThread, transfer: ArrayBuffer[] = []): Promise<Out> {
    if (!this.open) return Promise.reject(new Error(`${this.name} is closed`));
    const id = this.nextId++;
    return new Promise<Out>((resolve, reject) => {
      this.pending.set(id, { resolve, reject });
      this.keepAlive();
      this.worker.postMessage(make(id), transfer);
    });
  }

  /** Lets the thread finish its queue, release its sessions and exit by itself. */
  close(): Promise<void> {
    this.closed ??= this.exited
      ? Promise.resolve()
      : new Promise<void>((resolve) => {
          this.worker.ref();
          this.worker.once('exit', () => resolve());
          this.worker.postMessage(this.closeMessage);
        });
    return this.closed;
  }

  private keepAlive(): void {
    if (this.pending.size > 0 || this.closed) this.worker.ref();
    else this.worker.unref();
  }

  private onMessage(msg: ThreadReply<Out>): void {
    if (msg.type === 'ready') {
      this.device = msg.device;
      this.ready?.resolve();
    } else if (msg.type === 'out') {
      this.take(msg.id)?.resolve(msg as Out);
    } else if (msg.type === 'error') {
      const err = new Error(msg.message);
      if (msg.id === undefined) this.ready?.reject(err);
      else this.take(msg.id)?.reject(err);
    }
  }

  private take(id: number) {
    const p = this.pending.get(id);
    this.pending.delete(id);
    this.keepAlive();
    return p;
  }

  private failAll(err: Error): void {
    this.ready?.reject(err);
    for (const p of this.pending.values()) p.reject(err);
    this.pending.clear();
  }
}
