/**
 * How chat messages and summarization requests become the prompt text the engine completes. Defined once
 * so the API (which counts prompt tokens at admission) and any direct engine call agree byte for byte.
 *
 * A model with a chat template (an instruct model's `chat_template`, stored in its package manifest) gets
 * its messages rendered by that template through @huggingface/jinja, with `add_generation_prompt: true`
 * and the template's `bos_token` / `eos_token`; the engine then adds no second BOS (a prompt that starts
 * with BOS gets none). A model without one (the embedded TinyStories model) gets the messages joined as
 * plain text.
 */
import { Template } from '@huggingface/jinja';

export interface ChatMessage {
  role: 'system' | 'user' | 'assistant';
  content: string;
}

/** A model's chat template: Jinja source and the special-token strings it reads (the manifest's `chat`). */
export interface ChatTemplate {
  template: string;
  bosToken?: string;
  eosToken?: string;
}

/** The plain rendering for models without a chat template. */
export function renderChatPrompt(messages: ChatMessage[]): string {
  return messages.map((m) => m.content).join('\n');
}

export function renderSummarizePrompt(text: string): string {
  return `${text.trim()}\n\nIn short:`;
}

/** What `/v1/summarize` asks an instruct model, as the one user message of the conversation. */
export const SUMMARIZE_INSTRUCTION =
  'Summarize the following text in a few sentences. Reply with the summary only.';

export const summarizeMessages = (text: string): ChatMessage[] => [
  { role: 'user', content: `${SUMMARIZE_INSTRUCTION}\n\n${text.trim()}` },
];

/** The template refused the conversation (e.g. `raise_exception('Conversation roles must alternate')`). */
export class ChatTemplateError extends Error {
  override name = 'ChatTemplateError';
}

export interface PromptRenderer {
  /** Whether the model has a chat template (false: plain text prompts). */
  readonly templated: boolean;
  chat(messages: ChatMessage[]): string;
  summarize(text: string): string;
}

/**
 * The prompt renderer of a model: its chat template, parsed once (a template that does not parse throws
 * here, at model load, not at the first request), or the plain rendering when it has none.
 */
export function promptRenderer(chat?: ChatTemplate): PromptRenderer {
  if (!chat) return { templated: false, chat: renderChatPrompt, summarize: renderSummarizePrompt };
  const template = new Template(chat.template);
  const specials = {
    ...(chat.bosToken !== undefined ? { bos_token: chat.bosToken } : {}),
    ...(chat.eosToken !== undefined ? { eos_token: chat.eosToken } : {}),
  };
  const render = (messages: ChatMessage[]): string => {
    try {
      return template.render({ messages, add_generation_prompt: true, ...specials });
    } catch (err) {
      throw new ChatTemplateError(
        `the model's chat template refused the messages: ${(err as Error).message}`,
      );
    }
  };
  return { templated: true, chat: render, summarize: (text) => render(summarizeMessages(text)) };
}
