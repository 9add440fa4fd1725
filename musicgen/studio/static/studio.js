// musicgen studio: the page's only script (vanilla JS, no libraries, nothing loaded from the network).
// Generate -> POST api/jobs (multipart form) -> poll api/jobs/<id> -> draw each variation's piano roll,
// give it an <audio> player (WAV rendered by the server) and download links.
// Edit: drag across bars of a roll (numbered as the server's infill counts them: roll.measures) -> "Regenerate
// these bars" -> POST api/jobs/<id>/pieces/<n>/infill -> poll the new job -> its piece replaces the card (the
// regenerated bars shaded); the versions before stay in the card's history (Undo, download).
// A planned form (the "sections" field, sent as `form`): the plan sets the length, so the length field is
// disabled (a disabled field is not sent) while it is filled; each piece's roll.sections are lettered above its
// roll at their first bar, with a marker line.
"use strict";

const $ = (id) => document.getElementById(id);
const POLL_MS = 400;
// the page's settings an edit sends (bpm and time signature stay the piece's own)
const EDIT_FIELDS = ["model", "infill_candidates", "temperature", "top_p", "seed", "chords", "chord_tones", "density", "key",
  "tonal_memory"];
let maxUpload = 2 * 1024 * 1024;

function showError(message) {
  const box = $("error");
  box.textContent = message ? "error: " + message : "";
  box.hidden = !message;
}

function setStatus(text, value, max) {
  $("status").hidden = false;
  $("status-text").textContent = text;
  const bar = $("progress");
  if (value === undefined) { bar.removeAttribute("value"); } else { bar.max = max; bar.value = value; }
}

async function readJson(response) {
  try { return await response.json(); } catch (e) { return { error: `the server answered ${response.status} without JSON` }; }
}

async function loadInfo() {
  const response = await fetch("api/info");
  const info = await readJson(response);
  $("checkpoint").textContent = info.checkpoint || "?";
  const models = $("model");  // the server's own list: the page names a model, never a path
  models.innerHTML = "";
  for (const name of info.models || [info.checkpoint]) {
    const option = document.createElement("option");
    option.value = name; option.textContent = name;
    models.appendChild(option);
  }
  models.onchange = () => { $("checkpoint").textContent = models.value; };
  $("synth").textContent = info.synthesis || "?";
  if (info.max_upload_bytes) maxUpload = info.max_upload_bytes;
  if (info.limits) { $("bars").max = info.limits.max_bars; $("num_samples").max = info.limits.max_variations; }
  // the form's initial values come from the server (one source: the option dataclasses)
  for (const [name, value] of Object.entries(info.defaults || {})) {
    const input = $(name);
    if (input && input.value === "") input.value = value;
  }
}

// --- the piano roll --------------------------------------------------------------------------------------
const STRIP = 16;  // px above the roll for a planned form's section letters (no strip without a plan)

// selection: {a, b} (0-based bar indices into roll.measures, either order) or null
function drawRoll(canvas, roll, playhead, selection) {
  const ratio = window.devicePixelRatio || 1;
  const width = canvas.clientWidth || 800, height = canvas.clientHeight || 200;
  if (canvas.width !== Math.round(width * ratio)) { canvas.width = Math.round(width * ratio); canvas.height = Math.round(height * ratio); }
  const ctx = canvas.getContext("2d");
  ctx.setTransform(ratio, 0, 0, ratio, 0, 0);
  ctx.clearRect(0, 0, width, height);
  const notes = roll.notes.filter((n) => !n[4]);
  const measures = roll.measures || [];
  const sections = roll.sections || [];
  const top = sections.length ? STRIP : 0;
  const seconds = Math.max(roll.seconds, 0.001);
  let low = 127, high = 0;
  for (const n of notes) { low = Math.min(low, n[2]); high = Math.max(high, n[2]); }
  if (high < low) { low = 48; high = 72; }
  low -= 2; high += 2;
  const x = (t) => (t / seconds) * width;
  const rowH = (height - top) / (high - low + 1);
  const y = (p) => top + (high - p) * rowH;
  if (roll.prompt_end > 0) { ctx.fillStyle = "#e6e8ee"; ctx.fillRect(0, top, x(roll.prompt_end), height - top); }
  ctx.fillStyle = "#fff0c2";  // bars an edit regenerated
  for (const [a, b] of roll.regenerated || []) ctx.fillRect(x(a), top, x(b) - x(a), height - top);
  let chosen = null;
  if (selection && measures.length) {
    const first = Math.max(0, Math.min(selection.a, selection.b)), last = Math.min(measures.length - 1, Math.max(selection.a, selection.b));
    chosen = [x(measures[first][0]), x(measures[last][1])];
    ctx.fillStyle = "rgba(43, 95, 217, 0.16)";
    ctx.fillRect(chosen[0], top, chosen[1] - chosen[0], height - top);
  }
  ctx.strokeStyle = "#c4c8d6"; ctx.lineWidth = 1;
  const lines = measures.length ? measures.map((m) => m[0]).concat(roll.bars.filter((b) => b > measures[measures.length - 1][1] + 1e-3)) : roll.bars;
  for (const b of lines) { ctx.beginPath(); ctx.moveTo(Math.round(x(b)) + 0.5, top); ctx.lineTo(Math.round(x(b)) + 0.5, height); ctx.stroke(); }
  for (const n of notes) {
    const v = n[3] / 127;
    ctx.fillStyle = `hsl(${225 - 40 * v}, 75%, ${68 - 38 * v}%)`;  // louder: darker
    ctx.fillRect(x(n[0]), y(n[2]), Math.max(1.5, x(n[1]) - x(n[0])), Math.max(1.5, rowH * 0.85));
  }
  if (measures.length) {  // bar numbers, as the server's infill counts them (every k-th where bars are narrow)
    const span = measures[measures.length - 1][1] - measures[0][0];
    const step = Math.max(1, Math.ceil(22 / Math.max(x(span) / measures.length, 0.1)));
    ctx.fillStyle = "#5a6078"; ctx.font = "10px system-ui, sans-serif"; ctx.textBaseline = "top";
    measures.forEach((m, i) => { if (i % step === 0) ctx.fillText(String(i + 1), x(m[0]) + 2, top + 2); });
  }
  if (sections.length) {  // a planned form: its letters in a strip above the roll, a line at each section's start
    ctx.fillStyle = "#eceef5"; ctx.fillRect(0, 0, width, top);
    ctx.strokeStyle = "#3a3f55"; ctx.lineWidth = 1.5;
    ctx.font = "bold 12px system-ui, sans-serif"; ctx.textBaseline = "middle";
    for (const s of sections) {
      const at = Math.round(x(s.start)) + 0.75;
      ctx.beginPath(); ctx.moveTo(at, 0); ctx.lineTo(at, height); ctx.stroke();
      ctx.fillStyle = "#3a3f55"; ctx.fillText(s.letter, at + 4, top / 2 + 1);
    }
    ctx.lineWidth = 1;
    canvas.dataset.sections = sections.map((s) => `${s.letter}@${s.first_bar}`).join(" ");
  }
  if (chosen) { ctx.strokeStyle = "#2b5fd9"; ctx.lineWidth = 2; ctx.strokeRect(chosen[0] + 1, top + 1, chosen[1] - chosen[0] - 2, height - top - 2); ctx.lineWidth = 1; }
  if (playhead > 0) { ctx.strokeStyle = "#d22"; ctx.beginPath(); ctx.moveTo(x(playhead), 0); ctx.lineTo(x(playhead), height); ctx.stroke(); }
  canvas.dataset.notes = String(notes.length);
}

// the bar (0-based index into roll.measures) under a pointer at clientX
function barAt(canvas, roll, clientX) {
  const rect = canvas.getBoundingClientRect();
  const t = ((clientX - rect.left) / Math.max(rect.width, 1)) * Math.max(roll.seconds, 0.001);
  const measures = roll.measures;
  for (let i = 0; i < measures.length; i++) if (t < measures[i][1]) return i;
  return measures.length - 1;
}

function numberInput(className, label, max) {
  const wrap = document.createElement("label");
  wrap.className = "bar-input";
  const input = document.createElement("input");
  input.type = "number"; input.min = "1"; input.className = className;
  if (max) input.max = String(max);
  wrap.append(label + " ", input);
  return [wrap, input];
}

// state: {label, id, history: [{piece, job}, ...] (the versions before this one, oldest first), selection}
function pieceCard(piece, job, state) {
  state = state || { label: `Variation ${piece.index + 1}`, id: "piece-" + piece.index, history: [] };
  const measures = piece.roll.measures || [];
  const card = document.createElement("article");
  card.className = "piece";
  card.id = state.id;
  card.dataset.job = job.id;
  card.dataset.edit = String(piece.edit || 0);
  const title = document.createElement("h2");
  title.textContent = state.label + (piece.edit ? ` · edit ${piece.edit}` : "");
  const meta = document.createElement("p");
  meta.className = "meta";
  const sections = piece.sections || [];
  if (piece.infilled_bars) {
    meta.textContent = `bars ${piece.infilled_bars} regenerated (shaded; best of ${piece.candidates.join("/")} candidate(s)) · ` +
      `${piece.continuation_notes} new notes (${piece.notes} in the file) · ${piece.seconds.toFixed(1)} s · seed ${job.seed}`;
  } else {
    meta.textContent = `${piece.bars} bars written · ${piece.continuation_notes} new notes (${piece.notes} in the file) · ` +
      `${piece.seconds.toFixed(1)} s · ${piece.tokens} tokens · stopped by ${piece.stop_reason} · seed ${job.seed}`;
  }
  if (sections.length) {  // a planned form: its sections first ("form A8 B8 A8 · ...")
    const form = document.createElement("span");
    form.className = "sections";
    form.textContent = "form " + sections.map((s) => s.letter + s.bars).join(" ");
    meta.prepend(form, " · ");
  }
  const canvas = document.createElement("canvas");
  canvas.className = "roll" + (measures.length ? " selectable" : "");
  canvas.setAttribute("aria-label", `piano roll of ${state.label.toLowerCase()}`);
  const play = document.createElement("div");
  play.className = "play";
  const player = document.createElement("audio");
  player.controls = true; player.preload = "auto"; player.src = piece.urls.wav;
  player.title = "audio: " + piece.audio;
  const links = document.createElement("span");
  for (const [kind, label] of [["mid", "MIDI"], ["wav", "WAV"], ["json", "settings (JSON)"]]) {
    const a = document.createElement("a");
    a.href = piece.urls[kind]; a.download = `${piece.name}.${kind}`; a.textContent = "Download " + label;
    a.className = "download-" + kind;
    links.append(a, " ");
  }
  play.append(player, links);

  // editing: select bars, regenerate them, undo (a selection carried over from the version before stays)
  let selection = state.selection && Math.max(state.selection.a, state.selection.b) < measures.length ? state.selection : null;
  let dragging = false;
  const edit = document.createElement("div");
  edit.className = "edit";
  const [fromLabel, from] = numberInput("bar-from", "from bar", measures.length);
  const [toLabel, to] = numberInput("bar-to", "to bar", measures.length);
  const regenerate = document.createElement("button");
  regenerate.type = "button"; regenerate.className = "regenerate"; regenerate.textContent = "Regenerate these bars";
  const undo = document.createElement("button");
  undo.type = "button"; undo.className = "undo"; undo.textContent = "Undo";
  undo.hidden = !state.history.length;
  const hint = document.createElement("span");
  hint.className = "hint";
  hint.textContent = measures.length ? `drag across bars on the roll (1–${measures.length})` : (piece.bars_error || "no bars to edit");
  regenerate.disabled = from.disabled = to.disabled = !measures.length;
  edit.append(fromLabel, toLabel, regenerate, undo, hint);
  if (state.history.length) {
    const before = state.history[state.history.length - 1].piece;
    const a = document.createElement("a");
    a.href = before.urls.mid; a.download = `${before.name}.mid`; a.className = "download-previous";
    a.textContent = "previous version (MIDI)";
    edit.append(" ", a);
  }

  card.append(title, meta, canvas, edit, play);
  for (const warning of piece.warnings) {
    const w = document.createElement("p"); w.className = "warn"; w.textContent = warning; card.append(w);
  }
  const redraw = () => drawRoll(canvas, piece.roll, player.currentTime, selection);
  const showSelection = () => {
    from.value = String(Math.min(selection.a, selection.b) + 1);
    to.value = String(Math.max(selection.a, selection.b) + 1);
    redraw();
  };
  if (selection) { from.value = String(Math.min(selection.a, selection.b) + 1); to.value = String(Math.max(selection.a, selection.b) + 1); }
  canvas.addEventListener("pointerdown", (event) => {
    if (!measures.length || event.button !== 0) return;
    const bar = barAt(canvas, piece.roll, event.clientX);
    selection = { a: bar, b: bar }; dragging = true;
    canvas.setPointerCapture(event.pointerId);
    event.preventDefault();
    showSelection();
  });
  canvas.addEventListener("pointermove", (event) => {
    if (!dragging) return;
    const bar = barAt(canvas, piece.roll, event.clientX);
    if (bar !== selection.b) { selection.b = bar; showSelection(); }
  });
  for (const name of ["pointerup", "pointercancel"]) canvas.addEventListener(name, () => { dragging = false; });
  const typed = () => {
    const a = parseInt(from.value, 10), b = parseInt(to.value, 10);
    const ok = (n) => Number.isInteger(n) && n >= 1 && n <= measures.length;
    if (ok(a) && ok(b)) selection = { a: a - 1, b: b - 1 };
    else if (ok(a) || ok(b)) { const n = ok(a) ? a : b; selection = { a: n - 1, b: n - 1 }; }
    else selection = null;
    redraw();
  };
  from.addEventListener("input", typed);
  to.addEventListener("input", typed);
  const replace = (next) => { card.replaceWith(next); next.roll(); };
  regenerate.addEventListener("click", async () => {
    showError("");
    const a = from.value.trim(), b = to.value.trim();
    const spec = a && b ? (a === b ? a : `${a}-${b}`) : (a || b);
    const data = new FormData();
    data.set("infill", spec);
    for (const name of EDIT_FIELDS) { const value = $(name).value.trim(); if (value !== "") data.set(name, value); }
    regenerate.disabled = undo.disabled = true;
    setStatus(`regenerating bars ${spec || "?"} of ${state.label.toLowerCase()}…`);
    try {
      const response = await fetch(`api/jobs/${job.id}/pieces/${piece.index}/infill`, { method: "POST", body: data });
      const answer = await readJson(response);
      if (!response.ok) throw new Error(answer.error || `status ${response.status}`);
      const done = await poll(answer.id);
      setStatus(`done: bars ${done.infill} of ${state.label.toLowerCase()} regenerated in ${done.elapsed.toFixed(1)} s (seed ${done.seed})`, 1, 1);
      replace(pieceCard(done.pieces[0], done, { label: state.label, id: state.id, history: [...state.history, { piece, job }], selection }));
    } catch (err) {
      $("status").hidden = true;
      showError(err.message || String(err));
      regenerate.disabled = undo.disabled = false;
    }
  });
  undo.addEventListener("click", () => {
    const before = state.history[state.history.length - 1];
    replace(pieceCard(before.piece, before.job, { label: state.label, id: state.id, history: state.history.slice(0, -1), selection }));
    setStatus(`back to the version before (bars ${piece.infilled_bars} as they were)`, 1, 1);
  });

  let frame = 0;
  const tick = () => { redraw(); if (!player.paused) frame = requestAnimationFrame(tick); };
  player.addEventListener("play", () => { cancelAnimationFrame(frame); tick(); });
  player.addEventListener("seeked", tick);
  player.addEventListener("pause", tick);
  player.addEventListener("loadeddata", () => { player.dataset.loaded = "1"; });
  player.addEventListener("error", () => { player.dataset.loaded = "error"; });
  card.roll = redraw;
  return card;
}

function showResults(job) {
  const results = $("results");
  results.textContent = "";
  for (const piece of job.pieces) { const card = pieceCard(piece, job); results.append(card); card.roll(); }
  results.dataset.job = job.id;
}

// --- Generate ----------------------------------------------------------------------------------------------
function progressText(job) {
  if (job.status === "queued") return "waiting for a free worker…";
  if (job.infill && job.status === "running") {
    return `regenerating bars ${job.infill}: ${job.candidates} candidate(s), the one that leads best into the bars after is kept · ${job.elapsed.toFixed(0)} s`;
  }
  if (job.infill && job.status === "rendering") return "rendering audio…";
  if (job.status === "rendering") return `rendering audio for ${job.num_samples} variation(s)…`;
  const limit = job.limit ? ` (limit ${job.limit})` : "";
  if (job.form) {
    return `writing ${job.num_samples} variation(s) of form ${job.form}, one at a time: ${job.tokens} tokens of this one so far, ` +
      `about ${job.expected} expected${limit} · ${job.elapsed.toFixed(0)} s`;
  }
  return `writing ${job.num_samples} variation(s) of ${job.bars} bars: ${job.tokens} tokens each so far, ` +
    `about ${job.expected} expected${limit} · ${job.elapsed.toFixed(0)} s`;
}

async function poll(id) {
  for (;;) {
    const response = await fetch("api/jobs/" + id);
    const job = await readJson(response);
    if (!response.ok) throw new Error(job.error || `status ${response.status}`);
    if (job.status === "done") return job;
    if (job.status === "error") throw new Error(job.error);
    if (job.status === "running" && !job.infill) setStatus(progressText(job), Math.min(job.tokens, job.expected), job.expected);
    else setStatus(progressText(job));
    await new Promise((resolve) => setTimeout(resolve, POLL_MS));
  }
}

async function generate(event) {
  event.preventDefault();
  showError("");
  const form = $("form");
  const file = $("prompt").files[0];
  if (file && file.size > maxUpload) {
    showError(`'${file.name}' is ${(file.size / 1048576).toFixed(1)} MiB; the studio accepts MIDI files up to ${(maxUpload / 1048576).toFixed(1)} MiB`);
    return;
  }
  const data = new FormData(form);
  if (!file) data.delete("prompt");
  data.set("include_prompt", $("include_prompt").checked ? "true" : "false");
  data.set("allow_eos", $("allow_eos").checked ? "true" : "false");
  $("generate").disabled = true;
  setStatus("sending…");
  try {
    const response = await fetch("api/jobs", { method: "POST", body: data });
    const answer = await readJson(response);
    if (!response.ok) throw new Error(answer.error || `status ${response.status}`);
    const job = await poll(answer.id);
    setStatus(`done: ${job.pieces.length} variation(s) in ${job.elapsed.toFixed(1)} s (seed ${job.seed})`, 1, 1);
    showResults(job);
  } catch (err) {
    $("status").hidden = true;
    showError(err.message || String(err));
  } finally {
    $("generate").disabled = false;
  }
}

// a planned form sets the length: the length field is disabled (and so not sent) while one is given
function formChanged() {
  const planned = $("form_plan").value.trim() !== "";
  $("bars").disabled = planned;
  $("allow_eos").disabled = planned;
}

$("form").addEventListener("submit", generate);
$("form_plan").addEventListener("input", formChanged);
window.addEventListener("resize", () => { for (const card of document.querySelectorAll(".piece")) card.roll(); });
formChanged();  // a value the browser restored
loadInfo().catch((err) => showError("cannot reach the studio server: " + err.message));
