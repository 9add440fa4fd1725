// musicgen studio, Play mode: an endless stream that plays while the server writes it (docs/stream.md).
// Play -> POST api/streams (the form's seed, sampling, controls and prompt) -> EventSource api/streams/<id>/events:
// one `bar` event per finished bar, its notes with their times in seconds from the stream's start -> each note
// is scheduled on a small Web Audio synth (and, when chosen, sent to a Web MIDI output with a latency offset)
// and drawn on a scrolling piano roll. Every 250 ms the page reports the bar it is playing (POST .../position:
// the server writes at most a few bars past it, and the report is the stream's heartbeat). While playing, a
// change to a steerable field of the form (key, chords, density, bpm, temperature, top-p, tonal memory, chord
// tones, the planned form's sections) is sent at once (POST .../steer): the answer names the bar it takes effect from. Save downloads the
// bars played so far as MIDI; Stop ends the stream. A reload resumes a stream still playing (sessionStorage).
"use strict";

(function () {
  const $ = (id) => document.getElementById(id);
  const STEER_FIELDS = ["key", "chords", "chord_tones", "density", "bpm", "temperature", "top_p", "tonal_memory",
    "form"];
  const START_FIELDS = ["model", "seed", "prompt_bars", "prompt_time_signature", "time_signature", "form_recall",
    ...STEER_FIELDS];
  const PREROLL = 0.35;  // seconds between the first bar's arrival and its sound
  const VIEW_BEFORE = 6, VIEW_AFTER = 4;  // seconds of the roll left and right of the playhead
  const state = { id: null, source: null, audio: null, master: null, t0: null, bars: [], changes: [],
    scheduled: 0, late: 0, timer: null, midiOut: null, midiOffset: 0, frame: null };
  window.musicgenPlay = state;  // for the browser test and the curious

  function message(text) { $("play-status").textContent = text; }
  function error(text) { const box = $("error"); box.textContent = text ? "error: " + text : ""; box.hidden = !text; }

  async function answer(response) {
    try { return await response.json(); } catch (e) { return { error: `the server answered ${response.status}` }; }
  }

  async function postJson(url, body) {
    const response = await fetch(url, { method: "POST", headers: { "Content-Type": "application/json" },
      body: JSON.stringify(body || {}) });
    return [response, await answer(response)];
  }

  // --- sound ------------------------------------------------------------------------------------------------
  function ensureAudio() {
    if (!state.audio) {
      const Context = window.AudioContext || window.webkitAudioContext;
      state.audio = new Context();
    }
    if (state.master) state.master.disconnect();
    state.master = state.audio.createGain();
    state.master.gain.value = 0.18;
    state.master.connect(state.audio.destination);
    if (state.audio.state === "suspended") state.audio.resume();
  }

  function voice(when, seconds, pitch, velocity, program) {
    const ctx = state.audio, gain = ctx.createGain(), level = 0.15 + 0.85 * velocity / 127;
    if (program === 128) {  // drums: a short noise burst
      const length = Math.floor(ctx.sampleRate * 0.12), buffer = ctx.createBuffer(1, length, ctx.sampleRate);
      const data = buffer.getChannelData(0);
      for (let i = 0; i < length; i++) data[i] = (Math.random() * 2 - 1) * Math.exp(-i / (length / 6));
      const noise = ctx.createBufferSource();
      noise.buffer = buffer;
      gain.gain.value = 0.5 * level;
      noise.connect(gain).connect(state.master);
      noise.start(when);
      return;
    }
    const osc = ctx.createOscillator(), end = when + Math.max(0.08, Math.min(seconds, 4));
    osc.type = "triangle";
    osc.frequency.value = 440 * Math.pow(2, (pitch - 69) / 12);
    gain.gain.setValueAtTime(0, when);
    gain.gain.linearRampToValueAtTime(level, when + 0.008);
    gain.gain.exponentialRampToValueAtTime(level * 0.35, when + 0.25);
    gain.gain.setValueAtTime(level * 0.35, Math.max(when + 0.25, end - 0.05));
    gain.gain.linearRampToValueAtTime(0.0001, end + 0.08);
    osc.connect(gain).connect(state.master);
    osc.start(when);
    osc.stop(end + 0.1);
  }

  function sendMidi(when, seconds, pitch, velocity, program) {
    if (!state.midiOut) return;
    const channel = program === 128 ? 9 : 0;
    const at = performance.now() + (when - state.audio.currentTime) * 1000 + state.midiOffset;
    state.midiOut.send([0x90 | channel, pitch, Math.max(1, velocity)], at);
    state.midiOut.send([0x80 | channel, pitch, 0], at + Math.max(20, seconds * 1000));
  }

  function schedule(bar) {
    if (state.t0 === null) state.t0 = state.audio.currentTime + PREROLL - bar.start;
    state.bars.push(bar);
    if (bar.steer && Object.keys(bar.steer).length) state.changes.push({ bar: bar.index, steer: bar.steer });
    const now = state.audio.currentTime;
    for (const [onset, seconds, pitch, velocity, program] of bar.notes) {
      const when = state.t0 + onset;
      if (when < now) { state.late += 1; continue; }
      voice(when, seconds, pitch, velocity, program);
      sendMidi(when, seconds, pitch, velocity, program);
      state.scheduled += 1;
    }
  }

  // where playback is, in bars (fractional) from the stream's start
  function playingBar() {
    if (state.t0 === null || !state.bars.length) return 0;
    const t = state.audio.currentTime - state.t0;
    for (let i = state.bars.length - 1; i >= 0; i--) {
      const bar = state.bars[i];
      if (t >= bar.start) return bar.index + Math.min(1, (t - bar.start) / Math.max(bar.seconds, 1e-3));
    }
    return state.bars[0].index;
  }

  // --- the roll ---------------------------------------------------------------------------------------------
  function draw() {
    const canvas = $("play-roll"), ratio = window.devicePixelRatio || 1;
    const width = canvas.clientWidth || 800, height = canvas.clientHeight || 180;
    if (canvas.width !== Math.round(width * ratio)) { canvas.width = Math.round(width * ratio); canvas.height = Math.round(height * ratio); }
    const ctx = canvas.getContext("2d");
    ctx.setTransform(ratio, 0, 0, ratio, 0, 0);
    ctx.clearRect(0, 0, width, height);
    if (state.t0 !== null && state.audio) {
      const now = state.audio.currentTime - state.t0, span = VIEW_BEFORE + VIEW_AFTER;
      const x = (t) => (t - now + VIEW_BEFORE) / span * width, y = (p) => height - (p - 21) / 88 * height;
      ctx.strokeStyle = "#e4e6f0";
      for (const bar of state.bars) {
        if (bar.start > now + VIEW_AFTER || bar.start + bar.seconds < now - VIEW_BEFORE) continue;
        ctx.beginPath(); ctx.moveTo(x(bar.start), 0); ctx.lineTo(x(bar.start), height); ctx.stroke();
        ctx.fillStyle = "#99a"; ctx.font = "10px sans-serif"; ctx.fillText(String(bar.index + 1), x(bar.start) + 2, 10);
        if (bar.steer && Object.keys(bar.steer).length) {
          ctx.fillStyle = "#c0392b";
          ctx.fillText(Object.entries(bar.steer).map(([k, v]) => `${k}=${v === null ? "off" : v}`).join(" "), x(bar.start) + 2, 22);
        }
        for (const [onset, seconds, pitch, , program] of bar.notes) {
          ctx.fillStyle = program === 128 ? "#9aa" : (onset <= now ? "#2b5fd9" : "#9db3ea");
          ctx.fillRect(x(onset), y(pitch) - 2, Math.max(2, seconds / span * width), 3);
        }
      }
      ctx.strokeStyle = "#c0392b";
      ctx.beginPath(); ctx.moveTo(x(now), 0); ctx.lineTo(x(now), height); ctx.stroke();
      while (state.bars.length > 64 && state.bars[1].start < now - VIEW_BEFORE - 60) state.bars.shift();
    }
    state.frame = requestAnimationFrame(draw);
  }

  // --- the stream -------------------------------------------------------------------------------------------
  function connect(id, from) {
    state.id = id;
    sessionStorage.setItem("musicgen-stream", id);
    const source = new EventSource(`api/streams/${id}/events` + (from !== undefined ? `?from=${from}` : ""));
    state.source = source;
    source.addEventListener("bar", (event) => {
      schedule(JSON.parse(event.data));
      message(`playing: bar ${Math.floor(playingBar()) + 1}, ${state.bars.length ? state.bars[state.bars.length - 1].index + 1 : 0} written`);
    });
    source.addEventListener("end", (event) => {
      const info = JSON.parse(event.data);
      finish(`stopped${info.reason ? ": " + info.reason : ""}${info.error ? ": " + info.error : ""}`);
    });
    clearInterval(state.timer);
    state.timer = setInterval(async () => {
      if (!state.id) return;
      const [response, body] = await postJson(`api/streams/${state.id}/position`, { bar: playingBar() });
      if (!response.ok) finish(body.error || "the stream is gone");
    }, 250);
    if (!state.frame) state.frame = requestAnimationFrame(draw);
    $("play").disabled = true; $("play-stop").disabled = false; $("play-save").disabled = false;
  }

  function finish(text) {
    if (state.source) state.source.close();
    state.source = null;
    clearInterval(state.timer);
    if (state.master) { state.master.disconnect(); state.master = null; }
    sessionStorage.removeItem("musicgen-stream");
    $("play").disabled = false; $("play-stop").disabled = true;
    message(text);
  }

  async function play() {
    error("");
    ensureAudio();
    state.t0 = null; state.bars = []; state.changes = []; state.scheduled = 0; state.late = 0;
    const data = new FormData();
    for (const name of START_FIELDS) {
      const input = $(name === "form" ? "form_plan" : name);
      if (input && !input.disabled && input.value !== "") data.append(name, input.value);
    }
    const file = $("prompt").files[0];
    if (file) data.append("prompt", file);
    message("starting…");
    const response = await fetch("api/streams", { method: "POST", body: data });
    const body = await answer(response);
    if (!response.ok) { message(""); error(body.error || `the server answered ${response.status}`); return; }
    connect(body.id);
  }

  async function stop() {
    if (!state.id) return;
    await postJson(`api/streams/${state.id}/stop`);
    finish("stopped");
  }

  function save() {
    if (!state.id) return;
    const bars = Math.floor(playingBar());  // the bars played in full
    const link = document.createElement("a");
    link.href = `api/streams/${state.id}/midi` + (state.source ? `?bars=${bars}` : "");
    link.download = `stream_${state.id}.mid`;
    document.body.appendChild(link); link.click(); link.remove();
  }

  async function steer(event) {
    const name = event.target.id === "form_plan" ? "form" : event.target.id;  // the sections box is named form
    if (!state.source || !STEER_FIELDS.includes(name)) return;
    const [response, body] = await postJson(`api/streams/${state.id}/steer`, { [name]: event.target.value });
    if (!response.ok) { error(body.error || "could not change that"); return; }
    error("");
    $("play-steer").textContent = `${name} = ${event.target.value || "model"}: from bar ${body.from_bar + 1} ` +
      `(${body.latency_bars} bar${body.latency_bars === 1 ? "" : "s"} after the bar playing)`;
  }

  async function chooseMidi() {
    if (!navigator.requestMIDIAccess) { error("this browser has no Web MIDI"); return; }
    try {
      const access = await navigator.requestMIDIAccess();
      const select = $("midi-out");
      select.innerHTML = "<option value=''>none</option>";
      for (const output of access.outputs.values()) {
        const option = document.createElement("option");
        option.value = output.id; option.textContent = output.name;
        select.appendChild(option);
      }
      select.onchange = () => { state.midiOut = access.outputs.get(select.value) || null; };
      if (!access.outputs.size) error("no MIDI output found (connect a synth, or start a DAW's virtual port)");
    } catch (e) { error("MIDI access was refused: " + e.message); }
  }

  async function resume() {  // a reload: a stream of this tab that still plays goes on
    const id = sessionStorage.getItem("musicgen-stream");
    if (!id) return;
    const response = await fetch(`api/streams/${id}`);
    const body = await answer(response);
    if (!response.ok || body.status !== "playing") { sessionStorage.removeItem("musicgen-stream"); return; }
    state.id = id;
    // until Resume is pressed the page keeps the stream alive (a stream whose page is gone stops within
    // seconds); position 0 never moves a stream back, so the music waits where it was
    const keepAlive = setInterval(() => postJson(`api/streams/${id}/position`, { bar: 0 }), 2000);
    $("play").textContent = "Resume";
    $("play").onclick = () => {
      clearInterval(keepAlive);
      $("play").textContent = "Play"; $("play").onclick = play; ensureAudio(); connect(id);
    };
    $("play-stop").disabled = false; $("play-save").disabled = false;
    message(`stream ${id} is still playing: press Resume`);
  }

  document.addEventListener("DOMContentLoaded", () => {
    $("play").onclick = play;
    $("play-stop").onclick = stop;
    $("play-save").onclick = save;
    $("midi-choose").onclick = chooseMidi;
    $("midi-offset").oninput = (e) => { state.midiOffset = Number(e.target.value) || 0; };
    $("form").addEventListener("change", steer);
    resume();
  });
})();
