// Streams one generation with the openai npm package and prints each event as a JSON line.
// Usage: node stream_images.mjs <folder holding node_modules/openai> <base URL> <API key>
import { join } from 'node:path';
import { pathToFileURL } from 'node:url';

const [packages, baseURL, apiKey] = process.argv.slice(2);
const { default: OpenAI } = await import(pathToFileURL(join(packages, 'node_modules', 'openai', 'index.mjs')).href);
const client = new OpenAI({ baseURL, apiKey, maxRetries: 0 });
const stream = await client.images.generate({
  prompt: 'a fox', size: '128x64', stream: true, partial_images: 2, output_format: 'jpeg', steps: 6,
});
for await (const event of stream) {
  console.log(JSON.stringify(event));
}
