// The openai node SDK's Responses API against the gateway: `client.responses.create({ stream: true })`,
// printing each event as one JSON line. Usage: node responses.mjs BASE_URL PROMPT
import OpenAI from 'openai';

const [baseURL, input] = process.argv.slice(2);
const client = new OpenAI({ baseURL, apiKey: process.env.OPENAI_API_KEY ?? 'unused', maxRetries: 0 });
const stream = await client.responses.create({ model: 'write_tutorial', input, stream: true });
for await (const event of stream) {
  console.log(JSON.stringify(event));
}
