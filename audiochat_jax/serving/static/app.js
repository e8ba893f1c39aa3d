// The audiochat_jax demo: a multi-turn chat over the server's OpenAI-compatible API.
// Audio turns (recorded or uploaded) go as input_audio parts; replies stream as SSE.
"use strict";

const $ = (id) => document.getElementById(id);
const state = { model: null, messages: [], pending: null, recorder: null, busy: false };

function showError(message) {
  const box = $("error");
  box.textContent = message;
  box.hidden = !message;
}

function toBase64(buffer) {
  const bytes = new Uint8Array(buffer);
  let binary = "";
  for (let i = 0; i < bytes.length; i += 0x8000) {
    binary += String.fromCharCode.apply(null, bytes.subarray(i, i + 0x8000));
  }
  return btoa(binary);
}

// PCM16 WAV of a mono Float32Array (MediaRecorder's webm/ogg is decoded in the browser first).
function encodeWav(samples, rate) {
  const buf = new ArrayBuffer(44 + samples.length * 2);
  const v = new DataView(buf);
  const str = (o, s) => { for (let i = 0; i < s.length; i++) v.setUint8(o + i, s.charCodeAt(i)); };
  str(0, "RIFF"); v.setUint32(4, 36 + samples.length * 2, true); str(8, "WAVE");
  str(12, "fmt "); v.setUint32(16, 16, true); v.setUint16(20, 1, true); v.setUint16(22, 1, true);
  v.setUint32(24, rate, true); v.setUint32(28, rate * 2, true); v.setUint16(32, 2, true); v.setUint16(34, 16, true);
  str(36, "data"); v.setUint32(40, samples.length * 2, true);
  for (let i = 0; i < samples.length; i++) {
    const s = Math.max(-1, Math.min(1, samples[i]));
    v.setInt16(44 + i * 2, s < 0 ? s * 0x8000 : s * 0x7fff, true);
  }
  return buf;
}

function setPending(buffer, format, name) {
  const url = URL.createObjectURL(new Blob([buffer], { type: format === "wav" ? "audio/wav" : "audio/" + format }));
  state.pending = { data: toBase64(buffer), format, url, name };
  $("pending-audio").src = url;
  $("pending-name").textContent = name;
  $("pending").hidden = false;
}

function clearPending() {
  state.pending = null;
  $("pending").hidden = true;
  $("pending-audio").removeAttribute("src");
  $("file").value = "";
}

function bubble(role, text, audioUrl) {
  // A user turn reads as it is sent: the typed instruction, then the audio it applies to.
  const div = document.createElement("div");
  div.className = "msg " + role;
  const body = document.createElement("span");
  body.className = "text";
  body.textContent = text || "";
  div.appendChild(body);
  if (audioUrl) {
    const audio = document.createElement("audio");
    audio.controls = true;
    audio.src = audioUrl;
    div.appendChild(audio);
  }
  $("conversation").appendChild(div);
  div.scrollIntoView();
  return div;
}

async function readError(response) {
  try {
    const body = await response.json();
    return (body.error && body.error.message) || JSON.stringify(body);
  } catch (e) {
    return `HTTP ${response.status}`;
  }
}

async function send(event) {
  event.preventDefault();
  if (state.busy) return;
  const text = $("text").value.trim();
  const audio = state.pending;
  if (!text && !audio) return;
  showError("");
  let content = text;
  if (audio) {
    content = [];
    if (text) content.push({ type: "text", text });
    content.push({ type: "input_audio", input_audio: { data: audio.data, format: audio.format } });
  }
  const userMsg = { role: "user", content };
  const userDiv = bubble("user", text, audio && audio.url);
  const replyDiv = bubble("assistant", "");
  replyDiv.classList.add("streaming");
  state.busy = true;
  $("send").disabled = true;
  let reply = "";
  try {
    const response = await fetch("/v1/chat/completions", {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ model: state.model, messages: state.messages.concat([userMsg]), stream: true,
                             audio_transcripts: $("transcripts").checked }),
    });
    if (!response.ok) throw new Error(await readError(response));
    const reader = response.body.getReader();
    const decoder = new TextDecoder();
    let buffer = "", done = false;
    while (!done) {
      const { value, done: end } = await reader.read();
      if (end) break;
      buffer += decoder.decode(value, { stream: true });
      let cut;
      while ((cut = buffer.indexOf("\n\n")) >= 0) {
        const line = buffer.slice(0, cut).trim();
        buffer = buffer.slice(cut + 2);
        if (!line.startsWith("data:")) continue;
        const data = line.slice(5).trim();
        if (data === "[DONE]") { done = true; break; }
        const chunk = JSON.parse(data);
        if (chunk.error) throw new Error(chunk.error.message);
        if (chunk.audio_transcripts && chunk.audio_transcripts.length) {
          const t = document.createElement("div");
          t.className = "transcript";
          t.textContent = "heard: “" + chunk.audio_transcripts[chunk.audio_transcripts.length - 1] + "”";
          userDiv.appendChild(t);
        }
        const delta = chunk.choices && chunk.choices[0].delta.content;
        if (delta) {
          reply += delta;
          replyDiv.querySelector(".text").textContent = reply;
        }
      }
    }
    state.messages.push(userMsg, { role: "assistant", content: reply.trim() });
    $("text").value = "";
    clearPending();
    replyDiv.classList.remove("streaming");
    replyDiv.classList.add("done");
  } catch (e) {
    userDiv.remove();
    replyDiv.remove();
    showError(e.message);
  } finally {
    state.busy = false;
    $("send").disabled = false;
  }
}

async function onFile() {
  const file = $("file").files[0];
  if (!file) return;
  showError("");
  const ext = (file.name.split(".").pop() || "").toLowerCase();
  const format = ext || (file.type.split("/")[1] || "");
  setPending(await file.arrayBuffer(), format, file.name);
}

async function toggleRecord() {
  if (state.recorder) {
    state.recorder.stop();
    return;
  }
  if (!navigator.mediaDevices || !navigator.mediaDevices.getUserMedia) {
    showError("This browser gives no microphone here (it needs https or localhost); upload a file instead.");
    return;
  }
  try {
    const stream = await navigator.mediaDevices.getUserMedia({ audio: true });
    const recorder = new MediaRecorder(stream);
    const parts = [];
    recorder.ondataavailable = (e) => parts.push(e.data);
    recorder.onstop = async () => {
      stream.getTracks().forEach((t) => t.stop());
      state.recorder = null;
      $("record").classList.remove("on");
      $("record").textContent = "● Record";
      const ctx = new AudioContext();
      const decoded = await ctx.decodeAudioData(await new Blob(parts).arrayBuffer());
      const mono = new Float32Array(decoded.length);
      for (let c = 0; c < decoded.numberOfChannels; c++) {
        const ch = decoded.getChannelData(c);
        for (let i = 0; i < ch.length; i++) mono[i] += ch[i] / decoded.numberOfChannels;
      }
      setPending(encodeWav(mono, decoded.sampleRate), "wav", "recording.wav");
    };
    recorder.start();
    state.recorder = recorder;
    $("record").classList.add("on");
    $("record").textContent = "■ Stop";
  } catch (e) {
    showError("Microphone: " + e.message);
  }
}

function reset() {
  state.messages = [];
  $("conversation").innerHTML = "";
  clearPending();
  showError("");
}

async function init() {
  $("composer").addEventListener("submit", send);
  $("file").addEventListener("change", onFile);
  $("record").addEventListener("click", toggleRecord);
  $("pending-clear").addEventListener("click", clearPending);
  $("reset").addEventListener("click", reset);
  $("text").addEventListener("keydown", (e) => {
    if (e.key === "Enter" && !e.shiftKey) send(e);
  });
  try {
    const response = await fetch("/v1/models");
    const models = await response.json();
    state.model = models.data[0].id;
    $("model").textContent = `${state.model} · context ${models.data[0].context_length}` +
      (models.data[0].audio ? "" : " · text only");
  } catch (e) {
    showError("Cannot reach the server: " + e.message);
  }
}

init();
