// The Vercel AI SDK's default OpenAI provider (the Responses API) against the gateway, unmodified:
// `streamText({ model: openai('write_tutorial') })`. Prints {"text": delta} lines for the text stream,
// then {"finishReason", "usage", "text"}. Usage: node vercel.mjs BASE_URL PROMPT
import { createOpenAI } from '@ai-sdk/openai';
import { streamText } from 'ai';

const [baseURL, prompt] = process.argv.slice(2);
const openai = createOpenAI({ baseURL, apiKey: process.env.OPENAI_API_KEY ?? 'unused' });
let failure = null;
const result = streamText({
  model: openai('write_tutorial'),
  prompt,
  maxRetries: 0,
  onError: ({ error }) => {
    failure = error;
  },
});
for await (const delta of result.textStream) {
  console.log(JSON.stringify({ text: delta }));
}
if (failure) {
  console.error(failure);
  process.exit(2);
}
console.log(
  JSON.stringify({
    finishReason: await result.finishReason,
    usage: await result.usage,
    text: await result.text,
    reasoning: await result.reasoningText,
  }),
);
