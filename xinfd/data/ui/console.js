// xinfd console: a client of the daemon's HTTP API and nothing more.
//
// Every view reads or changes the daemon through the control API mounted at /control (the routes xinfctl uses)
// and the OpenAI routes under /v1, with the admin key the operator typed in (sessionStorage, sent as Bearer).
// Data from the daemon is only ever put on the page as text nodes (never parsed as HTML), and the page's
// Content-Security-Policy forbids inline script and eval.

const KEY_STORAGE = "xinfd-admin-key";
const CONTROL = "/control/v1";
const POLL_MS = 2000;
const LOG_LIMIT = 400000; // characters kept in the log view while following
// The try forms: each one's model select, the ability its models need, and the field to type in first.
const TRY_FORMS = [["chat-model", "chat", "chat-input"], ["embed-model", "embed", "embed-input"],
  ["rerank-model", "rerank", "rerank-query"]];

const $ = (id) => document.getElementById(id);

/** An element with attributes and children (strings become text nodes, so nothing is parsed as HTML). */
function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs)) {
    if (value === null || value === undefined || value === false) continue;
    if (name === "class") node.className = value;
    else if (name.startsWith("on")) node.addEventListener(name.slice(2), value);
    else node.setAttribute(name, value === true ? "" : String(value));
  }
  for (const child of children.flat()) {
    if (child === null || child === undefined) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

function show(id, text, kind = "") {
  const node = $(id);
  node.textContent = text;
  node.classList.toggle("error", kind === "error");
  node.classList.toggle("ok", kind === "ok");
}

// ---- the API ------------------------------------------------------------------------------------------------

class ApiError extends Error {
  constructor(status, message, code, param) {
    super(message);
    this.status = status;
    this.code = code;
    this.param = param;
  }
  describe() {
    const where = this.param ? ` (field ${this.param})` : "";
    return `${this.status} ${this.code || "error"}: ${this.message}${where}`;
  }
}

function authHeaders(extra = {}) {
  const key = sessionStorage.getItem(KEY_STORAGE);
  return key ? { ...extra, Authorization: `Bearer ${key}` } : extra;
}

async function errorOf(response) {
  let body = null;
  try {
    body = await response.json();
  } catch {
    return new ApiError(response.status, response.statusText || "request failed", "", null);
  }
  const err = (body && body.error) || {};
  const message = typeof err === "string" ? err : err.message || body.detail || response.statusText;
  return new ApiError(response.status, message, err.code || "", err.param || null);
}

/** fetch with the key; a non-2xx answer becomes an ApiError carrying the daemon's message and field. */
async function call(path, { method = "GET", body, signal } = {}) {
  const headers = authHeaders(body === undefined ? {} : { "Content-Type": "application/json" });
  const response = await fetch(path, {
    method, headers, signal, body: body === undefined ? undefined : JSON.stringify(body),
  });
  if (!response.ok) throw await errorOf(response);
  return response;
}

async function getJson(path) {
  return (await call(path)).json();
}

/** Read a streamed body chunk by chunk as text. */
async function readText(response, onText) {
  const reader = response.body.getReader();
  const decoder = new TextDecoder();
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    onText(decoder.decode(value, { stream: true }));
  }
  onText(decoder.decode());
}

/** Split a streamed body into lines (NDJSON, SSE). */
async function readLines(response, onLine) {
  let buffer = "";
  await readText(response, (text) => {
    buffer += text;
    let cut;
    while ((cut = buffer.indexOf("\n")) >= 0) {
      onLine(buffer.slice(0, cut).replace(/\r$/, ""));
      buffer = buffer.slice(cut + 1);
    }
  });
  if (buffer) onLine(buffer);
}

function reportError(err) {
  if (err && err.name === "AbortError") return;
  const text = err instanceof ApiError ? err.describe() : `request failed: ${err && err.message}`;
  show("error-line", text, "error");
  if (err instanceof ApiError && err.status === 401) signOut("The key was refused: " + err.message);
}

// ---- sign-in ------------------------------------------------------------------------------------------------

const state = { status: null, models: [], modelsJson: "", families: [], engines: [], timer: null, logs: null };

async function signIn(key) {
  sessionStorage.setItem(KEY_STORAGE, key);
  try {
    state.status = await getJson(`${CONTROL}/status`);
  } catch (err) {
    sessionStorage.removeItem(KEY_STORAGE);
    show("key-error", err instanceof ApiError ? err.describe() : `cannot reach the daemon: ${err.message}`,
      "error");
    return;
  }
  show("key-error", "");
  $("sign-in").hidden = true;
  $("console").hidden = false;
  $("sign-out").hidden = false;
  const s = state.status;
  $("daemon-line").textContent = `xinfd ${s.version} · pid ${s.pid} · ${s.endpoint || ""}`;
  $("launch-venv").checked = Boolean(s.enable_virtual_env);
  $("launch-venv-default").textContent =
    `The daemon's default: ${s.enable_virtual_env ? "on" : "off"} (XINFERENCE_ENABLE_VIRTUAL_ENV).`;
  await Promise.all([loadCatalog(), refreshModels()]);
  state.timer = setInterval(() => refreshModels().catch(reportError), POLL_MS);
}

function signOut(reason = "") {
  sessionStorage.removeItem(KEY_STORAGE);
  clearInterval(state.timer);
  stopLogs();
  $("console").hidden = true;
  $("sign-out").hidden = true;
  $("sign-in").hidden = false;
  $("daemon-line").textContent = "";
  show("key-error", reason, reason ? "error" : "");
}

// ---- views --------------------------------------------------------------------------------------------------

function selectView(name) {
  for (const button of document.querySelectorAll("nav button[data-view]")) {
    button.setAttribute("aria-pressed", String(button.dataset.view === name));
  }
  for (const panel of document.querySelectorAll("[data-view-panel]")) {
    panel.hidden = panel.dataset.viewPanel !== name;
  }
  show("error-line", "");
  if (name === "venvs") refreshVenvs().catch(reportError);
  if (name === "gpus") refreshGpus().catch(reportError);
}

// ---- models -------------------------------------------------------------------------------------------------

async function refreshModels() {
  const models = await getJson(`${CONTROL}/models`);
  const json = JSON.stringify(models);
  if (json === state.modelsJson) return;
  state.models = models;
  // Leave the list alone while the operator is typing in it (a scale field); the next poll catches up.
  if ($("models-list").contains(document.activeElement) && document.activeElement.tagName === "INPUT") return;
  state.modelsJson = json;
  renderModels();
  fillModelSelects();
}

function failureOf(replica) {
  return replica.failure || replica.last_exit || "";
}

function renderModels() {
  const list = $("models-list");
  list.replaceChildren(...state.models.map(modelCard));
  $("models-empty").hidden = state.models.length > 0;
}

function modelCard(m) {
  const uid = m.model_uid;
  const rows = m.replicas.map((r) => el("tr", { "data-replica": r.index },
    el("td", {}, String(r.index)),
    el("td", {}, el("span", { class: `state ${r.state}` }, r.state)),
    el("td", {}, r.pid === null ? "–" : String(r.pid)),
    el("td", {}, r.gpu_indices.length ? r.gpu_indices.join(",") : "CPU"),
    el("td", {}, String(r.restarts)),
    el("td", {}, failureOf(r) || "–"),
  ));
  const scaleInput = el("input", { type: "number", min: 1, max: 256, value: m.replicas.length || m.replica,
    "aria-label": `Replicas of ${uid}`, class: "scale-input" });
  const scaleButton = el("button", { type: "button", class: "scale-button", onclick: () =>
    scaleModel(uid, Number(scaleInput.value)).catch(reportError) }, "Scale");
  const terminateButton = el("button", { type: "button", class: "danger terminate-button" }, "Terminate");
  terminateButton.addEventListener("click", () => {
    if (terminateButton.dataset.armed !== "1") { // a second press confirms, so one slip stops nothing
      terminateButton.dataset.armed = "1";
      terminateButton.textContent = "Confirm terminate";
      setTimeout(() => { terminateButton.dataset.armed = ""; terminateButton.textContent = "Terminate"; }, 5000);
      return;
    }
    terminateModel(uid).catch(reportError);
  });
  return el("article", { class: "model", "data-uid": uid },
    el("h3", {}, el("span", { class: "uid" }, uid), el("span", { class: `state model-state ${m.state}` }, m.state),
      el("span", { class: "muted small" }, `${m.model_name} · ${m.model_engine} · ${m.abilities.join(", ")}`)),
    m.error ? el("p", { class: "error" }, m.error) : null,
    el("div", { class: "scroll" }, el("table", { class: "replicas" },
      el("thead", {}, el("tr", {}, ["Replica", "State", "PID", "GPU", "Restarts", "Last failure"].map(
        (h) => el("th", { scope: "col" }, h)))),
      el("tbody", {}, rows))),
    el("div", { class: "actions" },
      el("label", {}, "Replicas ", scaleInput), scaleButton,
      el("button", { type: "button", class: "logs-button", onclick: () => openLogs(uid) }, "Log"),
      ["chat", "embed", "rerank"].some((a) => m.abilities.includes(a))
        ? el("button", { type: "button", onclick: () => openTry(uid) }, "Try") : null,
      terminateButton),
  );
}

async function scaleModel(uid, replicas) {
  await call(`${CONTROL}/models/${encodeURIComponent(uid)}/scale`, { method: "POST", body: { replicas } });
  show("error-line", "");
  state.modelsJson = "";
  await refreshModels();
}

async function terminateModel(uid) {
  await call(`${CONTROL}/models/${encodeURIComponent(uid)}`, { method: "DELETE" });
  if (state.logs && state.logs.uid === uid) stopLogs();
  state.modelsJson = "";
  await refreshModels();
}

/** Fill a select with ``values``, keeping the current choice; with no values and a ``placeholder``, one empty
 * option says why the list is empty (a required select then refuses to submit it, natively). */
function fillSelect(select, values, labelOf = (v) => v, placeholder = "") {
  const kept = select.value;
  const options = values.map((v) => el("option", { value: v }, labelOf(v)));
  if (!options.length && placeholder) options.push(el("option", { value: "" }, placeholder));
  select.replaceChildren(...options);
  if (values.includes(kept)) select.value = kept;
}

function fillModelSelects() {
  const uids = (ability) => state.models.filter((m) => !ability || m.abilities.includes(ability))
    .map((m) => m.model_uid);
  fillSelect($("logs-model"), uids());
  for (const [id, ability] of TRY_FORMS) {
    fillSelect($(id), uids(ability), undefined, `no ${ability} model is running`);
  }
}

// ---- launch -------------------------------------------------------------------------------------------------

async function loadCatalog() {
  [state.families, state.engines] = await Promise.all([getJson(`${CONTROL}/families`),
    getJson(`${CONTROL}/engines`)]);
  fillSelect($("launch-family"), state.families.map((f) => f.model_name));
  fillEngines();
}

function fillEngines() {
  const family = state.families.find((f) => f.model_name === $("launch-family").value);
  const names = family ? family.engines : [];
  const info = new Map(state.engines.map((e) => [e.name, e]));
  const select = $("launch-engine");
  select.replaceChildren(...names.map((name) => {
    const e = info.get(name);
    const available = e ? e.available : false;
    return el("option", { value: name, disabled: !available }, available ? name : `${name} (unavailable)`);
  }));
  const first = names.find((n) => info.get(n) && info.get(n).available);
  if (first) select.value = first;
  $("engine-reasons").replaceChildren(...names.map((name) => {
    const e = info.get(name);
    const text = e ? `${name}: ${e.available ? "available" : "unavailable"} — ${e.reason}` : `${name}: not installed`;
    return el("li", { class: e && e.available ? "" : "unavailable" }, text);
  }));
}

function addRow(listId, fields) {
  const inputs = fields.map(([cls, label, placeholder]) =>
    el("input", { type: "text", class: cls, "aria-label": label, placeholder, autocomplete: "off" }));
  const item = el("li", {}, inputs,
    el("button", { type: "button", class: "remove-row", "aria-label": `Remove this ${fields[0][1]}`,
      onclick: () => item.remove() }, "−"));
  $(listId).append(item);
  inputs[0].focus();
}

function launchBody() {
  const body = { model_name: $("launch-family").value, replica: Number($("launch-replicas").value) };
  if ($("launch-engine").value) body.model_engine = $("launch-engine").value;
  const uid = $("launch-uid").value.trim();
  if (uid) body.model_uid = uid;
  const nGpu = $("launch-ngpu").value.trim();
  body.n_gpu = nGpu === "" || nGpu === "auto" ? "auto" : (/^\d+$/.test(nGpu) ? Number(nGpu) : nGpu);
  const gpuIdx = $("launch-gpuidx").value.trim();
  if (gpuIdx) body.gpu_idx = gpuIdx.split(",").map((s) => (/^\s*\d+\s*$/.test(s) ? Number(s) : s.trim()));
  body.enable_virtual_env = $("launch-venv").checked;
  body.virtual_env_packages = [...document.querySelectorAll("#package-list .package")]
    .map((i) => i.value.trim()).filter(Boolean);
  body.env = {};
  for (const item of document.querySelectorAll("#env-list li")) {
    const name = item.querySelector(".env-name").value.trim();
    if (name) body.env[name] = item.querySelector(".env-value").value;
  }
  body.options = {};
  for (const item of document.querySelectorAll("#option-list li")) {
    const name = item.querySelector(".option-name").value.trim();
    if (name) body.options[name] = optionValue(item.querySelector(".option-value").value.trim());
  }
  return body;
}

/** A launch option's value as typed: a number, true/false or null as JSON values, anything else as text. */
function optionValue(text) {
  if (/^-?\d+(\.\d+)?$/.test(text)) return Number(text);
  if (text === "true" || text === "false") return text === "true";
  if (text === "null" || text === "") return null;
  return text;
}

async function launch(event) {
  event.preventDefault();
  const progress = $("launch-progress");
  progress.replaceChildren();
  show("launch-status", "launching…");
  const submit = $("launch-submit");
  submit.disabled = true;
  const started = performance.now();
  const line = (text, cls = "") => progress.append(el("li", { class: cls },
    `+${((performance.now() - started) / 1000).toFixed(1)}s ${text}`));
  try {
    const response = await call(`${CONTROL}/models`, { method: "POST", body: launchBody() });
    let last = null;
    await readLines(response, (text) => {
      if (!text.trim()) return;
      const e = JSON.parse(text);
      last = e;
      line(`${e.event}: ${e.message}`, e.event === "error" ? "error" : "");
      progress.lastChild.scrollIntoView({ block: "nearest" });
    });
    if (last && last.event === "ready") show("launch-status", `READY: ${last.model ? last.model.model_uid : ""}`, "ok");
    else if (last && last.event === "error") show("launch-status", `launch failed (${last.code}): ${last.message}`, "error");
    else show("launch-status", "the stream ended without a result; see the model list", "error");
  } catch (err) {
    if (err instanceof ApiError) {
      show("launch-status", `refused: ${err.describe()}`, "error");
      line(err.describe(), "error");
    } else {
      show("launch-status", `launch failed: ${err.message}`, "error");
    }
  } finally {
    submit.disabled = false;
    state.modelsJson = "";
    refreshModels().catch(reportError);
  }
}

// ---- venvs --------------------------------------------------------------------------------------------------

function size(bytes) {
  if (bytes === null || bytes === undefined) return "?";
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let n = bytes;
  let i = 0;
  while (n >= 1024 && i < units.length - 1) { n /= 1024; i += 1; }
  return `${n.toFixed(i ? 1 : 0)} ${units[i]}`;
}

async function refreshVenvs() {
  const rows = await getJson(`${CONTROL}/venvs`);
  $("venvs-table").tBodies[0].replaceChildren(...rows.map((v) => el("tr", { "data-path": v.path },
    el("td", {}, v.model_name), el("td", {}, v.model_engine), el("td", {}, v.python_version),
    el("td", {}, size(v.size_bytes)), el("td", {}, String(v.packages)),
    el("td", {}, v.in_use_by.length ? v.in_use_by.join(", ") : "–"),
    el("td", {}, el("button", { type: "button", class: "danger", onclick: () => removeVenv(v).catch(venvError) },
      "Remove")))));
  if (!rows.length) $("venvs-table").tBodies[0].append(el("tr", {}, el("td", { colspan: 7 }, "No venvs.")));
}

function venvError(err) {
  show("venvs-result", err instanceof ApiError ? `refused: ${err.describe()}` : String(err), "error");
}

async function removeVenv(v) {
  const query = new URLSearchParams({ engine: v.model_engine, python: v.python_version });
  const answer = await (await call(`${CONTROL}/venvs/${encodeURIComponent(v.model_name)}?${query}`,
    { method: "DELETE" })).json();
  show("venvs-result", `removed ${answer.removed.length}: ${answer.removed.join(", ") || "nothing"}`, "ok");
  await refreshVenvs();
}

async function gcVenvs() {
  const answer = await (await call(`${CONTROL}/venvs/gc`, { method: "POST", body: {} })).json();
  show("venvs-result", `gc removed ${answer.removed.length}: ${answer.removed.join(", ") || "nothing"}`, "ok");
  await refreshVenvs();
}

// ---- GPUs ---------------------------------------------------------------------------------------------------

async function refreshGpus() {
  const answer = await getJson(`${CONTROL}/gpus`);
  $("gpus-summary").textContent = `${answer.inventory.summary} · strategy ${answer.strategy}`;
  $("gpus-list").replaceChildren(...answer.gpus.map((g) => el("article", { class: "model", "data-gpu": g.index },
    el("h3", {}, `GPU ${g.index}: ${g.name}`, el("span", { class: "muted small" }, g.free_mb === null
      ? `${g.memory_mb ?? "?"} MiB` : `${g.free_mb} of ${g.memory_mb ?? "?"} MiB free`)),
    g.replicas.length
      ? el("ul", {}, g.replicas.map((r) => el("li", {}, el("strong", {}, r.label), ` ${r.state} — ${r.reason}`)))
      : el("p", { class: "muted" }, "No replica placed here."))));
  if (!answer.gpus.length) $("gpus-list").append(el("p", { class: "muted" }, "No GPUs: replicas run on the CPU."));
}

// ---- logs ---------------------------------------------------------------------------------------------------

function openLogs(uid) {
  selectView("logs");
  $("logs-model").value = uid;
  followLogs().catch(reportError);
}

function stopLogs() {
  if (state.logs) {
    state.logs.controller.abort();
    state.logs = null;
    show("logs-status", "stopped");
  }
}

async function followLogs(event) {
  if (event) event.preventDefault();
  stopLogs();
  const uid = $("logs-model").value;
  if (!uid) return;
  const replica = $("logs-replica").value || "0";
  const controller = new AbortController();
  state.logs = { uid, controller };
  const output = $("logs-output");
  output.textContent = "";
  const query = new URLSearchParams({ replica, lines: "200", follow: "1" });
  try {
    const response = await call(`${CONTROL}/models/${encodeURIComponent(uid)}/logs?${query}`,
      { signal: controller.signal });
    show("logs-status", `following ${uid} replica ${replica} (${response.headers.get("X-Xinfd-Log-Path") || ""})`);
    await readText(response, (text) => {
      if (!text) return;
      const atEnd = output.scrollTop + output.clientHeight >= output.scrollHeight - 4;
      output.append(text);
      if (output.textContent.length > LOG_LIMIT) output.textContent = output.textContent.slice(-LOG_LIMIT / 2);
      if (atEnd) output.scrollTop = output.scrollHeight;
    });
    if (state.logs && state.logs.controller === controller) show("logs-status", "the log stream ended");
  } catch (err) {
    if (err.name !== "AbortError") show("logs-status", err instanceof ApiError ? err.describe() : String(err), "error");
  }
}

// ---- try ----------------------------------------------------------------------------------------------------

/** The try view with ``uid`` picked wherever it fits; the first fitting form's text field gets the focus, so a
 * keyboard user types straight away (and the form is scrolled into view on a small screen). */
function openTry(uid) {
  selectView("try");
  let first = null;
  for (const [id, , input] of TRY_FORMS) {
    if (![...$(id).options].some((o) => o.value === uid)) continue;
    $(id).value = uid;
    first = first || input;
  }
  if (first) $(first).focus();
}

async function chat(event) {
  event.preventDefault();
  const output = $("chat-output");
  output.textContent = "";
  delete output.dataset.done;
  output.classList.remove("error");
  const body = { model: $("chat-model").value, stream: true,
    messages: [{ role: "user", content: $("chat-input").value }] };
  $("chat-send").disabled = true;
  try {
    const response = await call("/v1/chat/completions", { method: "POST", body });
    await readLines(response, (line) => {
      if (!line.startsWith("data:")) return; // SSE comments (keepalive pings) and blank lines
      const data = line.slice(5).trim();
      if (data === "[DONE]") return;
      const chunk = JSON.parse(data);
      if (chunk.error) throw new ApiError(500, chunk.error.message, chunk.error.code, null);
      for (const choice of chunk.choices || []) {
        const piece = choice.delta && choice.delta.content;
        if (piece) output.append(piece);
      }
    });
    output.dataset.done = "1";
  } catch (err) {
    output.classList.add("error");
    output.append(`\n${err instanceof ApiError ? err.describe() : err.message}`);
  } finally {
    $("chat-send").disabled = false;
  }
}

async function embed(event) {
  event.preventDefault();
  show("embed-output", "embedding…");
  $("embed-send").disabled = true;
  try {
    const answer = await (await call("/v1/embeddings", { method: "POST",
      body: { model: $("embed-model").value, input: $("embed-input").value } })).json();
    const vector = answer.data[0].embedding;
    show("embed-output", `${vector.length} dimensions: [${vector.slice(0, 8).map((x) => x.toFixed(4)).join(", ")}` +
      `${vector.length > 8 ? ", …" : ""}]`);
  } catch (err) {
    show("embed-output", err instanceof ApiError ? err.describe() : err.message, "error");
  } finally {
    $("embed-send").disabled = false;
  }
}

/** Decimals enough to tell every two different scores apart, at least 4: a cross-encoder's sigmoid scores often
 * agree to four places (all near 1, or all near 0.5 on a weak model), and equal-looking scores in a ranked list
 * hide the ranking. ``sorted`` is best first, so neighbours are the only pairs to compare. */
function scoreDecimals(sorted) {
  let digits = 4;
  const clash = (d) => sorted.some((s, i) => i > 0 && s !== sorted[i - 1] &&
    s.toFixed(d) === sorted[i - 1].toFixed(d));
  while (digits < 12 && clash(digits)) digits += 1;
  return digits;
}

// The documents are the textarea's non-empty lines; the answer is shown best first, each with its score.
async function rerank(event) {
  event.preventDefault();
  const output = $("rerank-output");
  output.replaceChildren();
  const documents = $("rerank-documents").value.split("\n").map((d) => d.trim()).filter((d) => d);
  if (!documents.length) {
    show("rerank-status", "enter at least one document (one per line)", "error");
    return;
  }
  show("rerank-status", "ranking…");
  $("rerank-send").disabled = true;
  try {
    const answer = await (await call("/v1/rerank", { method: "POST",
      body: { model: $("rerank-model").value, query: $("rerank-query").value, documents,
        return_documents: true } })).json();
    const ranked = [...answer.results].sort((a, b) => b.relevance_score - a.relevance_score);
    const digits = scoreDecimals(ranked.map((r) => r.relevance_score));
    output.replaceChildren(...ranked.map((r) => el("li", { "data-index": String(r.index) },
      el("span", { class: "score" }, r.relevance_score.toFixed(digits)), " ",
      el("span", { class: "document" }, r.document ? r.document.text : documents[r.index]))));
    show("rerank-status", `${ranked.length} document${ranked.length === 1 ? "" : "s"}, best first`);
  } catch (err) {
    show("rerank-status", err instanceof ApiError ? err.describe() : err.message, "error");
  } finally {
    $("rerank-send").disabled = false;
  }
}

/** Ctrl+Enter (⌘+Enter on a Mac) in a try form's text area sends the form, where a plain Enter is a new line;
 * not while the form's answer is still coming (its button is disabled then), so one request runs at a time. */
function sendOnCtrlEnter(event) {
  if (event.key !== "Enter" || !(event.ctrlKey || event.metaKey) || event.target.tagName !== "TEXTAREA") return;
  event.preventDefault();
  const form = event.currentTarget;
  if (!form.querySelector('button[type="submit"]').disabled) form.requestSubmit();
}

// ---- wiring -------------------------------------------------------------------------------------------------

function wire() {
  $("key-form").addEventListener("submit", (event) => {
    event.preventDefault();
    const key = $("key-input").value.trim();
    $("key-input").value = "";
    signIn(key).catch(reportError);
  });
  $("sign-out").addEventListener("click", () => signOut());
  for (const button of document.querySelectorAll("nav button[data-view]")) {
    button.addEventListener("click", () => selectView(button.dataset.view));
  }
  $("launch-family").addEventListener("change", fillEngines);
  $("launch-form").addEventListener("submit", launch);
  $("package-add").addEventListener("click", () =>
    addRow("package-list", [["package", "package", "name==1.0 or #system_torch#"]]));
  $("env-add").addEventListener("click", () =>
    addRow("env-list", [["env-name", "variable name", "NAME"], ["env-value", "variable value", "value"]]));
  $("option-add").addEventListener("click", () =>
    addRow("option-list", [["option-name", "option name", "name"], ["option-value", "option value", "value"]]));
  $("venvs-refresh").addEventListener("click", () => refreshVenvs().catch(venvError));
  $("venvs-gc").addEventListener("click", () => gcVenvs().catch(venvError));
  $("gpus-refresh").addEventListener("click", () => refreshGpus().catch(reportError));
  $("logs-form").addEventListener("submit", (event) => followLogs(event).catch(reportError));
  $("logs-stop").addEventListener("click", stopLogs);
  $("chat-form").addEventListener("submit", chat);
  $("embed-form").addEventListener("submit", embed);
  $("rerank-form").addEventListener("submit", rerank);
  for (const form of document.querySelectorAll("form.try")) form.addEventListener("keydown", sendOnCtrlEnter);
  const key = sessionStorage.getItem(KEY_STORAGE);
  if (key) signIn(key).catch(reportError);
}

wire();
