// musicgen studio: the page's only script (vanilla JS, no libraries, nothing loaded from the network).
// Generate -> POST api/jobs (multipart form) -> poll api/jobs/<id> -> draw each variation's piano roll,
// give it an <audio> player (WAV rendered by the server) and download links.
"use strict";

const $ = (id) => document.getElementById(id);
const POLL_MS = 400;
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
function drawRoll(canvas, roll, playhead) {
  const ratio = window.devicePixelRatio || 1;
  const width = canvas.clientWidth || 800, height = canvas.clientHeight || 200;
  if (canvas.width !== Math.round(width * ratio)) { canvas.width = Math.round(width * ratio); canvas.height = Math.round(height * ratio); }
  const ctx = canvas.getContext("2d");
  ctx.setTransform(ratio, 0, 0, ratio, 0, 0);
  ctx.clearRect(0, 0, width, height);
  const notes = roll.notes.filter((n) => !n[4]);
  const seconds = Math.max(roll.seconds, 0.001);
  let low = 127, high = 0;
  for (const n of notes) { low = Math.min(low, n[2]); high = Math.max(high, n[2]); }
  if (high < low) { low = 48; high = 72; }
  low -= 2; high += 2;
  const x = (t) => (t / seconds) * width;
  const rowH = height / (high - low + 1);
  const y = (p) => (high - p) * rowH;
  if (roll.prompt_end > 0) { ctx.fillStyle = "#e6e8ee"; ctx.fillRect(0, 0, x(roll.prompt_end), height); }
  ctx.strokeStyle = "#c4c8d6"; ctx.lineWidth = 1;
  for (const b of roll.bars) { ctx.beginPath(); ctx.moveTo(Math.round(x(b)) + 0.5, 0); ctx.lineTo(Math.round(x(b)) + 0.5, height); ctx.stroke(); }
  for (const n of notes) {
    const v = n[3] / 127;
    ctx.fillStyle = `hsl(${225 - 40 * v}, 75%, ${68 - 38 * v}%)`;  // louder: darker
    ctx.fillRect(x(n[0]), y(n[2]), Math.max(1.5, x(n[1]) - x(n[0])), Math.max(1.5, rowH * 0.85));
  }
  if (playhead > 0) { ctx.strokeStyle = "#d22"; ctx.beginPath(); ctx.moveTo(x(playhead), 0); ctx.lineTo(x(playhead), height); ctx.stroke(); }
  canvas.dataset.notes = String(notes.length);
}

function pieceCard(piece, job) {
  const card = document.createElement("article");
  card.className = "piece";
  card.id = "piece-" + piece.index;
  const title = document.createElement("h2");
  title.textContent = `Variation ${piece.index + 1}`;
  const meta = document.createElement("p");
  meta.className = "meta";
  meta.textContent = `${piece.bars} bars written · ${piece.continuation_notes} new notes (${piece.notes} in the file) · ` +
    `${piece.seconds.toFixed(1)} s · ${piece.tokens} tokens · stopped by ${piece.stop_reason} · seed ${job.seed}`;
  const canvas = document.createElement("canvas");
  canvas.className = "roll";
  canvas.setAttribute("aria-label", `piano roll of variation ${piece.index + 1}`);
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
  card.append(title, meta, canvas, play);
  for (const warning of piece.warnings) {
    const w = document.createElement("p"); w.className = "warn"; w.textContent = warning; card.append(w);
  }
  let frame = 0;
  const tick = () => { drawRoll(canvas, piece.roll, player.currentTime); if (!player.paused) frame = requestAnimationFrame(tick); };
  player.addEventListener("play", () => { cancelAnimationFrame(frame); tick(); });
  player.addEventListener("seeked", tick);
  player.addEventListener("pause", tick);
  player.addEventListener("loadeddata", () => { player.dataset.loaded = "1"; });
  player.addEventListener("error", () => { player.dataset.loaded = "error"; });
  card.roll = () => drawRoll(canvas, piece.roll, player.currentTime);
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
  if (job.status === "rendering") return `rendering audio for ${job.num_samples} variation(s)…`;
  const limit = job.limit ? ` (limit ${job.limit})` : "";
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
    if (job.status === "running") setStatus(progressText(job), Math.min(job.tokens, job.expected), job.expected);
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

$("form").addEventListener("submit", generate);
window.addEventListener("resize", () => { for (const card of document.querySelectorAll(".piece")) card.roll(); });
loadInfo().catch((err) => showError("cannot reach the studio server: " + err.message));
