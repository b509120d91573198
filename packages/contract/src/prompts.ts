/**
 * How chat messages and summarization requests become the prompt text the engine completes. Defined once
 * so the API (which counts prompt tokens at admission) and any direct engine call agree byte for byte.
 * The embedded default model (TinyStories) has no chat template: messages are joined as plain text.
 */
export interface ChatMessage {
  role: 'system' | 'user' | 'assistant';
  content: string;
}

export function renderChatPrompt(messages: ChatMessage[]): string {
  return messages.map((m) => m.content).join('\n');
}

export function renderSummarizePrompt(text: string): string {
  return `${text.trim()}\n\nIn short:`;
}
