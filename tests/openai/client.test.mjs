// The official OpenAI Node client (openai@6) against `m3 serve`: what an OpenAI user's code does,
// unchanged but for baseURL. Run by ctest (openai_node_client):
//   node tests/openai/client.test.mjs --m3 build/m3 --model tests/data/test-rt.gguf
// Starts `m3 serve` on a free port with an API key and an empty bank (--create), then checks:
// models, a chat completion, a streamed chat completion (deltas concatenate to the same text at
// temperature 0), a streamed legacy completion, errors the client raises as its own classes (401
// for a missing or wrong key, 400 for a bad max_tokens), and a knowledge round trip: add a document
// → search finds it → a chat completion about it names it in its provenance ("memories") → delete
// → search no longer finds it. Exits 77 (ctest: skipped) when node_modules is missing (setup.sh
// installs it with npm ci).
import { spawn } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import assert from 'node:assert/strict';

let OpenAI;
try {
  ({ default: OpenAI } = await import('openai'));
} catch (e) {
  console.log(`SKIP: the openai package is not installed (run scripts/setup.sh, or npm ci in tests/openai): ${e.message}`);
  process.exit(77);
}

function arg(name) {
  const i = process.argv.indexOf(name);
  if (i < 0 || i + 1 >= process.argv.length) {
    console.error(`usage: node client.test.mjs --m3 <m3 binary> --model <model.gguf>  (missing ${name})`);
    process.exit(2);
  }
  return process.argv[i + 1];
}

const m3 = arg('--m3');
const model = arg('--model');
const key = 'test-key-' + process.pid;
const dir = mkdtempSync(join(tmpdir(), 'm3-openai-'));
const server = spawn(m3, ['serve', '-m', model, '--bank', join(dir, 'bank'), '--create', '--port', '0', '--api-key', key,
                          '--model-id', 'm3-test', '-t', '2', '--slots', '2'], { stdio: ['ignore', 'pipe', 'pipe'] });
let output = '';
server.stderr.on('data', (d) => { output += d; });
const exited = new Promise((resolve) => server.on('exit', (code, signal) => resolve({ code, signal })));
const guard = setTimeout(() => {
  console.error('FAIL: timed out after 90 s\n' + output);
  server.kill('SIGKILL');
  process.exit(1);
}, 90_000);

function cleanup() {
  try { rmSync(dir, { recursive: true, force: true }); } catch {}
}

const url = await new Promise((resolve, reject) => {
  let buf = '';
  server.stdout.on('data', (d) => {
    buf += d;
    output += d;
    const m = buf.match(/listening on (http:\/\/[^\s]+)/);
    if (m) resolve(m[1]);
  });
  server.on('exit', (code) => reject(new Error(`m3 serve exited with ${code} before listening:\n${output}`)));
});

const client = new OpenAI({ baseURL: `${url}/v1`, apiKey: key, maxRetries: 0, timeout: 60_000 });
let failures = 0;
async function check(name, fn) {
  try {
    await fn();
    console.log(`ok    ${name}`);
  } catch (e) {
    failures++;
    console.log(`FAIL  ${name}: ${e.stack || e}`);
  }
}

const question = [{ role: 'user', content: 'Hello! What do you know?' }];

await check('models.list names the served model', async () => {
  const ids = [];
  for await (const m of client.models.list()) ids.push(m.id);
  assert.deepEqual(ids, ['m3-test']);
});

let chatText;
await check('chat completion', async () => {
  const r = await client.chat.completions.create({ model: 'm3-test', messages: question, max_tokens: 12, temperature: 0 });
  assert.equal(r.object, 'chat.completion');
  assert.equal(r.choices.length, 1);
  assert.equal(r.choices[0].message.role, 'assistant');
  assert.equal(typeof r.choices[0].message.content, 'string');
  assert.ok(['stop', 'length'].includes(r.choices[0].finish_reason), r.choices[0].finish_reason);
  assert.ok(r.usage.completion_tokens >= 1 && r.usage.completion_tokens <= 12, JSON.stringify(r.usage));
  assert.equal(r.usage.total_tokens, r.usage.prompt_tokens + r.usage.completion_tokens);
  assert.equal(r.memory_mode, 'memory');
  assert.ok(Array.isArray(r.memories));
  chatText = r.choices[0].message.content;
});

await check('streamed chat completion equals the non-streamed one', async () => {
  const stream = await client.chat.completions.create({ model: 'm3-test', messages: question, max_tokens: 12, temperature: 0,
                                                        stream: true });
  let text = '', chunks = 0, finish = null, roles = 0;
  for await (const chunk of stream) {
    chunks++;
    const c = chunk.choices[0];
    if (!c) continue;
    if (c.delta.role) roles++;
    text += c.delta.content ?? '';
    if (c.finish_reason) finish = c.finish_reason;
  }
  assert.ok(chunks >= 3, `only ${chunks} chunks`);
  assert.equal(roles, 1);
  assert.ok(finish, 'no finish_reason');
  assert.equal(text, chatText);
});

await check('streamed legacy completion equals the non-streamed one', async () => {
  const req = { model: 'm3-test', prompt: 'Once upon a time', max_tokens: 10, temperature: 0.8, seed: 11 };
  const whole = await client.completions.create(req);
  let text = '';
  for await (const chunk of await client.completions.create({ ...req, stream: true })) text += chunk.choices[0]?.text ?? '';
  assert.equal(text, whole.choices[0].text);
});

await check('a wrong API key is an AuthenticationError (401)', async () => {
  const bad = new OpenAI({ baseURL: `${url}/v1`, apiKey: 'wrong', maxRetries: 0 });
  await assert.rejects(bad.chat.completions.create({ model: 'm3-test', messages: question, max_tokens: 2 }), (e) => {
    assert.ok(e instanceof OpenAI.AuthenticationError, e.constructor.name);
    assert.equal(e.status, 401);
    assert.equal(e.error?.type, 'authentication_error');
    return true;
  });
});

await check('a request without an API key gets 401 with an OpenAI error body', async () => {
  const r = await fetch(`${url}/v1/chat/completions`, { method: 'POST', body: JSON.stringify({ messages: question }) });
  assert.equal(r.status, 401);
  const body = await r.json();
  assert.equal(body.error.type, 'authentication_error');
  assert.equal(typeof body.error.message, 'string');
});

await check('max_tokens: 0 is a BadRequestError naming the parameter', async () => {
  await assert.rejects(client.chat.completions.create({ model: 'm3-test', messages: question, max_tokens: 0 }), (e) => {
    assert.ok(e instanceof OpenAI.BadRequestError, e.constructor.name);
    assert.equal(e.status, 400);
    assert.equal(e.param, 'max_tokens');
    return true;
  });
});

await check('knowledge: add → search → the answer cites it → delete', async () => {
  const doc = { id: 'wombat-facts', title: 'Wombats', text: 'Wombats wobble westward while whistling. Wombat burrows are wide.' };
  const added = await client.post('/knowledge/documents', { body: doc });
  assert.equal(added.id, doc.id);
  assert.ok(added.references.length >= 1);
  const ids = added.references.map((r) => r.id);

  const found = await client.post('/knowledge/search', { body: { query: 'wombats wobble whistling', k: 3 } });
  assert.equal(found.data[0]?.document, doc.id, JSON.stringify(found));

  const r = await client.chat.completions.create({
    model: 'm3-test', max_tokens: 6, temperature: 0,
    messages: [{ role: 'user', content: 'Why do wombats wobble westward while whistling?' }] });
  const cited = r.memories.flatMap((chunk) => chunk.references);
  assert.ok(cited.some((ref) => ref.document === doc.id && ids.includes(ref.id)), JSON.stringify(r.memories));

  const del = await client.delete(`/knowledge/documents/${doc.id}`);
  assert.equal(del.deleted, true);
  const after = await client.post('/knowledge/search', { body: { query: 'wombats wobble whistling', k: 3 } });
  assert.ok(!after.data.some((h) => h.document === doc.id), JSON.stringify(after));
});

server.kill('SIGTERM');
const { code, signal } = await exited;
clearTimeout(guard);
await check('m3 serve exits 0 on SIGTERM', async () => {
  assert.equal(signal, null);
  assert.equal(code, 0, output);
});
cleanup();
if (failures) {
  console.log(`${failures} check(s) failed; server output:\n${output}`);
  process.exit(1);
}
console.log('all checks passed');
