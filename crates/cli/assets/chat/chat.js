// The chat page of `ingot serve`: a client of the server's own API. It reads the model's
// name from /v1/models, streams replies from /v1/chat/completions (Server-Sent Events over
// fetch), stops a reply by aborting its fetch (the server sees the connection close and
// cancels the request), and keeps the conversation and settings in localStorage.

import { renderMarkdown } from "./markdown.js";

const STORE = "ingot.chat.v1"; // {messages: [{role, content, note?}], settings: {...}}
const KEY_STORE = "ingot.apiKey";
const SETTINGS = ["system", "temperature", "top-p", "max-tokens"];

const $ = (id) => document.getElementById(id);
const ui = {
  model: $("model"),
  messages: $("messages"),
  empty: $("empty"),
  composer: $("composer"),
  prompt: $("prompt"),
  send: $("send"),
  stop: $("stop"),
  status: $("status"),
  newChat: $("new-chat"),
  toggleSettings: $("toggle-settings"),
  settings: $("settings"),
  apiKey: $("api-key"),
  rememberKey: $("remember-key"),
};

const state = {
  messages: [],
  settings: {},
  modelId: null,
  controller: null, // the AbortController of the reply streaming now
};

// --- storage -----------------------------------------------------------------------------

function load() {
  try {
    const saved = JSON.parse(localStorage.getItem(STORE) || "{}");
    if (Array.isArray(saved.messages)) {
      state.messages = saved.messages.filter(
        (m) => m && (m.role === "user" || m.role === "assistant") && typeof m.content === "string",
      );
    }
    if (saved.settings && typeof saved.settings === "object") state.settings = saved.settings;
  } catch {
    // A broken entry: start afresh rather than fail.
  }
  for (const id of SETTINGS) $(id).value = typeof state.settings[id] === "string" ? state.settings[id] : "";
  const remembered = localStorage.getItem(KEY_STORE);
  ui.rememberKey.checked = remembered !== null;
  ui.apiKey.value = remembered ?? sessionStorage.getItem(KEY_STORE) ?? "";
}

function save() {
  const messages = state.messages.map(({ role, content, note }) => (note ? { role, content, note } : { role, content }));
  try {
    localStorage.setItem(STORE, JSON.stringify({ messages, settings: state.settings }));
  } catch (e) {
    say(`The conversation could not be saved in this browser: ${e.message}`);
  }
}

function saveKey() {
  const key = ui.apiKey.value.trim();
  const [keep, drop] = ui.rememberKey.checked ? [localStorage, sessionStorage] : [sessionStorage, localStorage];
  drop.removeItem(KEY_STORE);
  if (key) keep.setItem(KEY_STORE, key);
  else keep.removeItem(KEY_STORE);
}

// --- rendering ---------------------------------------------------------------------------

function say(text, isError = false) {
  ui.status.textContent = text;
  ui.status.classList.toggle("error", isError);
}

function nearBottom() {
  const m = ui.messages;
  return m.scrollHeight - m.scrollTop - m.clientHeight < 80;
}

function scrollToEnd() {
  ui.messages.scrollTop = ui.messages.scrollHeight;
}

/** The DOM of one message: who, the body (Markdown for replies, text for the user), a note. */
function messageView(msg) {
  const view = document.createElement("article");
  view.className = `msg ${msg.role}`;
  const who = document.createElement("div");
  who.className = "who";
  who.textContent = msg.role === "user" ? "You" : state.modelId || "Assistant";
  const body = document.createElement("div");
  body.className = "body";
  const note = document.createElement("div");
  note.className = "note";
  view.append(who, body, note);
  fill(view, msg);
  return view;
}

function fill(view, msg) {
  const body = view.querySelector(".body");
  if (msg.role === "user") body.textContent = msg.content;
  else body.replaceChildren(renderMarkdown(msg.content));
  view.querySelector(".note").textContent = msg.note || "";
}

function renderAll() {
  ui.messages.replaceChildren(ui.empty);
  ui.empty.hidden = state.messages.length > 0;
  for (const msg of state.messages) ui.messages.append(messageView(msg));
  scrollToEnd();
}

function setBusy(busy) {
  ui.send.disabled = busy;
  ui.stop.hidden = !busy;
  document.body.classList.toggle("busy", busy);
  if (!busy) ui.prompt.focus();
}

function autosize() {
  ui.prompt.style.height = "auto";
  ui.prompt.style.height = `${Math.min(ui.prompt.scrollHeight + 2, window.innerHeight * 0.4)}px`;
}

// --- the API -----------------------------------------------------------------------------

function headers(json) {
  const h = {};
  if (json) h["Content-Type"] = "application/json";
  const key = ui.apiKey.value.trim();
  if (key) h.Authorization = `Bearer ${key}`;
  return h;
}

/** The message of an error response (OpenAI's shape), or its status line. */
async function errorText(r) {
  let msg = "";
  try {
    msg = (await r.json())?.error?.message || "";
  } catch {
    // Not JSON.
  }
  const hint = r.status === 401 ? " Enter the server's API key in Settings." : "";
  return `${r.status} ${r.statusText}${msg ? `: ${msg}` : ""}.${hint}`;
}

async function loadModel() {
  try {
    const r = await fetch("v1/models", { headers: headers(false), cache: "no-store" });
    if (!r.ok) {
      ui.model.textContent = r.status === 401 ? "API key needed" : "model unknown";
      if (r.status === 401) {
        openSettings(true);
        ui.apiKey.focus();
      }
      say(`The model list could not be read: ${await errorText(r)}`, true);
      return;
    }
    const data = await r.json();
    state.modelId = data?.data?.[0]?.id ?? null;
    ui.model.textContent = state.modelId ?? "model unknown";
    ui.model.title = data?.data?.[0]?.max_model_len ? `context: ${data.data[0].max_model_len} tokens` : "";
    document.title = state.modelId ? `${state.modelId} · Ingot chat` : "Ingot chat";
    for (const who of ui.messages.querySelectorAll(".msg.assistant .who")) who.textContent = state.modelId;
    say("");
  } catch (e) {
    ui.model.textContent = "server unreachable";
    say(`The server could not be reached: ${e.message}`, true);
  }
}

/** The request's sampling fields: those set in Settings (others take the server's defaults). */
function samplingFields() {
  const out = {};
  const num = (id, field, ok, int = false) => {
    const raw = $(id).value.trim();
    if (!raw) return;
    const v = Number(raw);
    if (!Number.isFinite(v) || !ok(v) || (int && !Number.isInteger(v))) throw new Error(`${$(id).labels[0].textContent} ${raw} is out of range`);
    out[field] = v;
  };
  num("temperature", "temperature", (v) => v >= 0);
  num("top-p", "top_p", (v) => v > 0 && v <= 1);
  num("max-tokens", "max_tokens", (v) => v >= 1, true);
  return out;
}

/** Yields the data of each Server-Sent Event of a response (comments skipped). */
async function* sseData(response) {
  const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
  let buf = "";
  let data = [];
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    buf += value;
    const lines = buf.split(/\r\n|\r|\n/);
    buf = lines.pop();
    for (const line of lines) {
      if (line === "") {
        if (data.length) yield data.join("\n");
        data = [];
      } else if (line.startsWith("data:")) {
        data.push(line.slice(line.startsWith("data: ") ? 6 : 5));
      }
    }
  }
  if (data.length) yield data.join("\n");
}

async function send(text) {
  let fields;
  try {
    fields = samplingFields();
  } catch (e) {
    say(e.message, true);
    openSettings(true);
    return;
  }
  const user = { role: "user", content: text };
  const reply = { role: "assistant", content: "" };
  state.messages.push(user, reply);
  save();
  renderAll();
  const view = ui.messages.lastElementChild;
  view.classList.add("streaming");
  view.querySelector(".body").setAttribute("aria-busy", "true");
  ui.prompt.value = "";
  autosize();
  say("");

  const system = $("system").value.trim();
  const history = state.messages.slice(0, -1).filter((m) => m.content);
  const body = {
    model: state.modelId ?? undefined,
    messages: [...(system ? [{ role: "system", content: system }] : []), ...history.map(({ role, content }) => ({ role, content }))],
    stream: true,
    stream_options: { include_usage: true },
    ...fields,
  };
  const controller = new AbortController();
  state.controller = controller;
  setBusy(true);

  // Redraws the reply once per frame at most, and less often as it grows: the next draw
  // waits four times as long as the last one took, so rendering takes at most a fifth of
  // the time however long the reply.
  let scheduled = false;
  let ended = false;
  let nextDraw = 0;
  let lastSave = 0;
  const draw = () => {
    scheduled = false;
    if (ended) return;
    const t0 = performance.now();
    const follow = nearBottom();
    fill(view, reply);
    if (follow) scrollToEnd();
    const t1 = performance.now();
    nextDraw = t1 + 4 * (t1 - t0);
    if (t1 - lastSave > 1000) {
      lastSave = t1;
      save();
    }
  };
  const schedule = () => {
    if (scheduled) return;
    scheduled = true;
    setTimeout(() => requestAnimationFrame(draw), Math.max(0, nextDraw - performance.now()));
  };
  let started = 0;
  let usage = null;
  let finish = null;
  let failure = null;
  try {
    const r = await fetch("v1/chat/completions", {
      method: "POST",
      headers: headers(true),
      body: JSON.stringify(body),
      signal: controller.signal,
    });
    if (!r.ok) throw new Error(await errorText(r));
    for await (const data of sseData(r)) {
      if (data === "[DONE]") break;
      const chunk = JSON.parse(data);
      if (chunk.error) {
        failure = chunk.error.message || "the server reported an error";
        break;
      }
      if (chunk.usage) usage = chunk.usage;
      const choice = chunk.choices?.[0];
      if (choice?.finish_reason) finish = choice.finish_reason;
      const piece = choice?.delta?.content;
      if (piece) {
        if (!started) started = performance.now();
        reply.content += piece;
        schedule();
      }
    }
    if (!finish && !failure) failure = "the connection closed before the reply finished";
  } catch (e) {
    if (e.name !== "AbortError") failure = e.message;
  }
  ended = true;
  state.controller = null;
  const stopped = controller.signal.aborted;

  const at = state.messages.indexOf(user);
  if (at < 0) {
    // "New chat" while it streamed: this turn is gone.
  } else if (!reply.content && (stopped || failure)) {
    // Nothing came: take the turn back and return its text to the box, to retry.
    state.messages.splice(at, 2);
    if (!ui.prompt.value) ui.prompt.value = text;
    renderAll();
    autosize();
    say(stopped ? "Stopped before the reply began." : `The reply failed: ${failure}`, !stopped);
  } else {
    if (stopped) reply.note = "stopped";
    else if (failure) reply.note = `error: ${failure}`;
    else {
      const parts = [];
      if (usage) {
        parts.push(`${usage.completion_tokens} tokens`);
        const secs = (performance.now() - started) / 1000;
        if (started && usage.completion_tokens > 1 && secs > 0) parts.push(`${(usage.completion_tokens / secs).toFixed(1)} tokens/s`);
      }
      if (finish === "length") parts.push("max tokens reached");
      reply.note = parts.join(" · ");
    }
    view.classList.remove("streaming");
    view.querySelector(".body").removeAttribute("aria-busy");
    const follow = nearBottom();
    fill(view, reply);
    if (follow) scrollToEnd();
    if (failure) say(`The reply failed: ${failure}`, true);
  }
  save();
  setBusy(false);
}

// --- controls ----------------------------------------------------------------------------

function openSettings(open) {
  ui.settings.hidden = !open;
  ui.toggleSettings.setAttribute("aria-expanded", String(open));
  document.body.classList.toggle("settings-open", open);
}

function stop() {
  state.controller?.abort();
}

ui.composer.addEventListener("submit", (e) => {
  e.preventDefault();
  const text = ui.prompt.value.trim();
  if (text && !state.controller) send(text);
});

ui.prompt.addEventListener("keydown", (e) => {
  if (e.key === "Enter" && !e.shiftKey && !e.isComposing) {
    e.preventDefault();
    ui.composer.requestSubmit();
  } else if (e.key === "Escape" && state.controller) {
    stop();
  }
});
ui.prompt.addEventListener("input", autosize);
ui.stop.addEventListener("click", stop);

ui.newChat.addEventListener("click", () => {
  stop();
  state.messages = [];
  save();
  renderAll();
  say("");
  ui.prompt.focus();
});

ui.toggleSettings.addEventListener("click", () => openSettings(ui.settings.hidden));
document.addEventListener("keydown", (e) => {
  if (e.key === "Escape" && !ui.settings.hidden && window.matchMedia("(max-width: 899px)").matches) {
    openSettings(false);
    ui.toggleSettings.focus();
  }
});

for (const id of SETTINGS) {
  $(id).addEventListener("input", () => {
    state.settings[id] = $(id).value;
    save();
  });
}

let keyTimer = 0;
ui.apiKey.addEventListener("input", () => {
  saveKey();
  clearTimeout(keyTimer);
  keyTimer = setTimeout(loadModel, 300);
});
ui.rememberKey.addEventListener("change", saveKey);

// Settings sit beside the chat on wide windows and over it on narrow ones: open by default
// on the first, closed on the second, and following the window when it crosses the line.
const wide = window.matchMedia("(min-width: 900px)");
wide.addEventListener("change", (e) => openSettings(e.matches));

load();
renderAll();
openSettings(wide.matches);
autosize();
ui.prompt.focus();
loadModel();
