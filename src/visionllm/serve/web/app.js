// The VisionLLM page: pick an image and a task, call /v1/predict, show the drawn result and the raw JSON.
//
// Extension points (for tasks that take visual prompts or answer with images):
// - a task in /v1/tasks may list `prompts` (e.g. ["point", "box", "scribble"]); each kind is a tool in
//   PROMPT_TOOLS that draws on #prompt-layer and adds entries to state.prompts (pixel coordinates of the image),
//   which are sent as `prompts` in the request;
// - a response with `output: "image"` carries the generated image in `image` and is shown in #result-image.
"use strict";

const PROMPT_TOOLS = {};  // kind -> {label, start(layer, image, prompts)}; none for the tasks of v1

const state = { image: null, tasks: [], prompts: [] };
const $ = (id) => document.getElementById(id);

function headers() {
  const h = { "Content-Type": "application/json" };
  const key = $("api-key").value.trim();
  if (key) h.Authorization = `Bearer ${key}`;
  return h;
}

async function api(path, body) {
  const options = body === undefined ? { headers: headers() } : { method: "POST", headers: headers(), body: JSON.stringify(body) };
  const response = await fetch(path, options);
  const data = await response.json().catch(() => ({ error: { message: `HTTP ${response.status}` } }));
  if (!response.ok) throw new Error(data.error ? data.error.message : `HTTP ${response.status}`);
  return data;
}

function setStatus(text, isError = false) {
  $("status").textContent = text;
  $("status").classList.toggle("error", isError);
}

function setImage(dataUrl) {
  state.image = dataUrl;
  state.prompts = [];
  $("input-image").src = dataUrl;
}

function blobToDataUrl(blob) {
  return new Promise((resolve, reject) => {
    const reader = new FileReader();
    reader.onload = () => resolve(reader.result);
    reader.onerror = () => reject(reader.error);
    reader.readAsDataURL(blob);
  });
}

async function chooseSample(img, url) {
  document.querySelectorAll("#samples img").forEach((el) => el.classList.toggle("chosen", el === img));
  setImage(await blobToDataUrl(await (await fetch(url)).blob()));
}

function currentTask() {
  return state.tasks.find((t) => t.task === $("task").value) || { task: "instruction", fields: ["instruction"], prompts: [] };
}

function updateFields() {
  const task = currentTask();
  document.querySelectorAll("[data-field]").forEach((el) => { el.hidden = !task.fields.includes(el.dataset.field); });
  const kinds = (task.prompts || []).filter((kind) => kind in PROMPT_TOOLS);
  $("prompt-tools").hidden = kinds.length === 0;
  $("input-stage").classList.toggle("prompting", kinds.length > 0);
}

function requestBody() {
  const task = currentTask();
  const body = { image: state.image, render: true, min_score: Number($("min-score").value) };
  if (task.task === "instruction") {
    body.instruction = $("instruction").value;
  } else {
    body.task = task.task;
    if (task.fields.includes("classes")) body.classes = $("classes").value.split(",").map((s) => s.trim()).filter(Boolean);
    if (task.fields.includes("expression")) body.expression = $("expression").value;
    if (task.fields.includes("question")) body.question = $("question").value;
    if (task.fields.includes("points")) body.points = Number($("points").value);
    if ((task.prompts || []).length) body.prompts = state.prompts;
  }
  return body;
}

function showResult(result) {
  const picture = result.output === "image" ? result.image : result.visualization;
  $("result-image").hidden = !picture;
  if (picture) $("result-image").src = picture;
  const rows = $("detections").querySelector("tbody");
  rows.replaceChildren();
  if (result.output === "detections") {
    const n = result.detections.length;
    $("answer").textContent = n ? `${n} object${n === 1 ? "" : "s"} found` : "No objects found";
    result.detections.forEach((d, i) => {
      const row = rows.insertRow();
      [i + 1, d.class_name, d.score.toFixed(2), d.box_xyxy_px.map((v) => v.toFixed(1)).join(", ")].forEach((v) => {
        row.insertCell().textContent = v;
      });
    });
  } else {
    $("answer").textContent = result.text || "";
  }
  $("detections").hidden = result.output !== "detections";
  const shown = { ...result };
  if (shown.visualization) shown.visualization = `<PNG data URL, ${shown.visualization.length} characters>`;
  $("raw-json").textContent = JSON.stringify(shown, null, 2);
}

async function run() {
  if (!state.image) { setStatus("Choose or upload an image first.", true); return; }
  $("run").disabled = true;
  document.body.dataset.state = "running";
  setStatus("Running…");
  const started = performance.now();
  try {
    const result = await api("/v1/predict", requestBody());
    showResult(result);
    setStatus(`${result.task} in ${((performance.now() - started) / 1000).toFixed(2)} s`);
    document.body.dataset.state = "done";
  } catch (error) {
    setStatus(error.message, true);
    document.body.dataset.state = "error";
  } finally {
    $("run").disabled = false;
  }
}

function init() {
  $("api-key").value = localStorage.getItem("visionllm-api-key") || "";
  $("api-key").addEventListener("change", () => { localStorage.setItem("visionllm-api-key", $("api-key").value); load(); });
  $("upload").addEventListener("change", async (event) => {
    const file = event.target.files[0];
    if (!file) return;
    document.querySelectorAll("#samples img").forEach((el) => el.classList.remove("chosen"));
    setImage(await blobToDataUrl(file));
  });
  $("task").addEventListener("change", updateFields);
  $("run").addEventListener("click", run);
  load();
}

async function load() {
  try {
    const [health, tasks, samples] = await Promise.all([api("/health"), api("/v1/tasks"), api("/v1/samples")]);
    $("model-id").textContent = health.model;
    state.tasks = tasks.data;
    $("task").replaceChildren(...[...state.tasks.map((t) => t.task), "instruction"].map((name) => new Option(name.replace("_", " "), name)));
    const strip = $("samples");
    strip.replaceChildren();
    const thumbs = samples.data.map((s) => {
      const img = new Image();
      img.src = s.url;
      img.alt = s.name;
      img.title = s.name;
      img.addEventListener("click", () => chooseSample(img, s.url));
      strip.append(img);
      return img;
    });
    if (!state.image && thumbs.length) await chooseSample(thumbs[0], samples.data[0].url);
    updateFields();
    setStatus("");
    document.body.dataset.state = "ready";
  } catch (error) {
    setStatus(error.message, true);
    document.body.dataset.state = "error";
  }
}

init();
