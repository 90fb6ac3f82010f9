// Renders /openapi.json as a reference page: every operation with its
// parameters, body and answers. Text only (textContent), so nothing in the
// document can become markup; no third-party code, so the page's strict CSP
// holds.

const el = (tag, props = {}, ...children) => {
  const node = document.createElement(tag);
  Object.assign(node, props);
  for (const c of children) node.append(c);
  return node;
};

// A schema in a line: `Job`, `array of Job`, `string (binary)`, an enum.
function describe(schema, doc) {
  if (!schema) return '';
  if (schema.$ref) return schema.$ref.split('/').pop();
  if (schema.oneOf || schema.anyOf) {
    return (schema.oneOf || schema.anyOf).map((s) => describe(s, doc)).join(' | ');
  }
  if (schema.enum) return schema.enum.map((v) => JSON.stringify(v)).join(' | ');
  const type = Array.isArray(schema.type) ? schema.type.filter((t) => t !== 'null').join(' | ') : schema.type;
  if (type === 'array') return `array of ${describe(schema.items, doc)}`;
  return schema.format ? `${type} (${schema.format})` : type || 'any';
}

function table(headings, rows) {
  if (rows.length === 0) return el('p', { className: 'muted small', textContent: 'none' });
  return el(
    'table',
    { className: 'reference-table' },
    el('thead', {}, el('tr', {}, ...headings.map((h) => el('th', { textContent: h })))),
    el('tbody', {}, ...rows.map((r) => el('tr', {}, ...r.map((c) => el('td', { textContent: String(c ?? '') }))))),
  );
}

function properties(name, schema, doc) {
  const required = new Set(schema.required || []);
  const rows = Object.entries(schema.properties || {}).map(([prop, s]) => [
    prop,
    describe(s, doc),
    required.has(prop) ? 'yes' : '',
    s.description || '',
  ]);
  return el(
    'section',
    { className: 'card', id: `schema-${name}` },
    el('h3', { textContent: name }),
    schema.description ? el('p', { textContent: schema.description }) : '',
    schema.enum ? el('p', { textContent: `one of ${describe(schema, doc)}` }) : table(['field', 'type', 'required', ''], rows),
  );
}

function operation(path, method, op, doc) {
  const params = (op.parameters || []).map((p) => [p.name, p.in, describe(p.schema, doc), p.required ? 'yes' : '', p.description || '']);
  const body = op.requestBody
    ? Object.entries(op.requestBody.content || {}).map(([type, c]) => [type, describe(c.schema, doc)])
    : [];
  const answers = Object.entries(op.responses || {}).map(([status, r]) => [
    status,
    r.description || '',
    Object.entries(r.content || {}).map(([type, c]) => `${type}: ${describe(c.schema, doc)}`).join('; '),
  ]);
  const auth = (op.security || []).flatMap((s) => Object.keys(s)).join(', ') || 'none';
  return el(
    'section',
    { className: 'card', id: op.operationId || `${method}-${path}` },
    el('h2', {}, el('code', { textContent: `${method.toUpperCase()} ${path}` })),
    el('p', { textContent: op.description || op.summary || '' }),
    el('p', { className: 'muted small', textContent: `authentication: ${auth}` }),
    el('h3', { textContent: 'Parameters' }),
    table(['name', 'in', 'type', 'required', ''], params),
    ...(body.length ? [el('h3', { textContent: 'Body' }), table(['content type', 'schema'], body)] : []),
    el('h3', { textContent: 'Answers' }),
    table(['status', '', 'content'], answers),
  );
}

async function main() {
  const out = document.getElementById('operations');
  let doc;
  try {
    const res = await fetch('/openapi.json');
    doc = await res.json();
  } catch (e) {
    document.getElementById('summary').textContent = `Could not load /openapi.json: ${e}`;
    return;
  }
  document.getElementById('title').textContent = `${doc.info.title} ${doc.info.version}`;
  const summary = document.getElementById('summary');
  summary.textContent = `${doc.info.description || ''} OpenAPI ${doc.openapi}: `;
  summary.append(el('a', { href: '/openapi.json', textContent: '/openapi.json' }));
  for (const [path, item] of Object.entries(doc.paths || {})) {
    for (const [method, op] of Object.entries(item)) {
      if (typeof op === 'object' && op.responses) out.append(operation(path, method, op, doc));
    }
  }
  out.append(el('h2', { textContent: 'Schemas' }));
  for (const [name, schema] of Object.entries(doc.components?.schemas || {})) {
    out.append(properties(name, schema, doc));
  }
}

main();
