// The VisionLLM page: pick an image and a task, call /v1/predict, show the drawn result and the raw JSON.
//
// Visual prompts: a task in /v1/tasks may list `prompts` (["point", "box", "scribble"] for a v2 model's region
// tasks). Each kind is a tool below that draws on #prompt-layer (the canvas over the image) and adds an entry
// {kind, data} in pixels of the image to state.prompts, sent as `regions` in the request. With a model that takes
// prompts, a free instruction (a chat turn) may carry them too ("What color is region1 <region>?").
//
// Images the model makes: a task whose /v1/tasks entry has `image: false` (generation) is sent without the input
// image; an answer with `output: "image"` (generation, editing) carries the image made in `image`, a chat reply
// the images its [GEN] / [EDIT] calls made in `images`. The last image made is shown in #result-image, with a bar
// (#edit-result) that sends an edit of it ("make the red circle green") and shows the edited image in its place.
"use strict";

// kind -> label and pointer handlers: down(p) starts a prompt, move(p) extends it, up(p) returns the finished
// prompt or null; p is the pointer in image pixels.
const PROMPT_TOOLS = {
  point: { label: "Point", down: (p) => ({ kind: "point", data: p }), move: (d) => d, up: (d) => d },
  box: {
    label: "Box",
    down: (p) => ({ kind: "box", start: p, data: [p[0], p[1], p[0], p[1]] }),
    move: (d, p) => ({ ...d, data: [Math.min(d.start[0], p[0]), Math.min(d.start[1], p[1]), Math.max(d.start[0], p[0]), Math.max(d.start[1], p[1])] }),
    up: (d) => (d.data[2] - d.data[0] >= 1 && d.data[3] - d.data[1] >= 1 ? { kind: "box", data: d.data } : null),
  },
  scribble: {
    label: "Scribble",
    down: (p) => ({ kind: "scribble", data: [p] }),
    move: (d, p) => ({ ...d, data: [...d.data, p] }),
    up: (d) => (d.data.length >= 2 ? { kind: "scribble", data: d.data } : null),
  },
};

// image: the input image (data URL); made: the last image the model made (data URL), the one #edit-result edits.
const state = { image: null, made: null, tasks: [], prompts: [], tool: "point", drawing: null };
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
  $("input-image").onload = drawPrompts;
}

// -- visual prompts -----------------------------------------------------------------------------

function imagePoint(event) {
  const img = $("input-image"), box = img.getBoundingClientRect();
  const x = ((event.clientX - box.left) * img.naturalWidth) / box.width;
  const y = ((event.clientY - box.top) * img.naturalHeight) / box.height;
  return [Math.round(Math.min(Math.max(x, 0), img.naturalWidth) * 10) / 10, Math.round(Math.min(Math.max(y, 0), img.naturalHeight) * 10) / 10];
}

function drawPrompts() {
  const img = $("input-image"), layer = $("prompt-layer");
  if (!img.naturalWidth) return;
  layer.width = img.naturalWidth * 4;
  layer.height = img.naturalHeight * 4;
  const g = layer.getContext("2d");
  g.clearRect(0, 0, layer.width, layer.height);
  g.scale(4, 4);
  const px = img.clientWidth ? img.naturalWidth / img.clientWidth : 1;  // image pixels per screen pixel
  g.lineWidth = 2.5 * px;
  const all = state.drawing ? [...state.prompts, state.drawing] : state.prompts;
  all.forEach((prompt, i) => {
    g.strokeStyle = g.fillStyle = i < state.prompts.length ? "#ff2d55" : "#ffcc00";
    if (prompt.kind === "point") {
      g.beginPath();
      g.arc(prompt.data[0], prompt.data[1], 5 * px, 0, 2 * Math.PI);
      g.fill();
    } else if (prompt.kind === "box") {
      const [x1, y1, x2, y2] = prompt.data;
      g.strokeRect(x1, y1, x2 - x1, y2 - y1);
    } else {
      g.beginPath();
      prompt.data.forEach(([x, y], k) => (k ? g.lineTo(x, y) : g.moveTo(x, y)));
      g.stroke();
    }
    if (i < state.prompts.length) {
      const [x, y] = prompt.kind === "scribble" ? prompt.data[0] : prompt.data;
      g.font = `bold ${13 * px}px sans-serif`;
      g.fillText(`region${i + 1}`, x + 6 * px, Math.max(13 * px, y - 6 * px));
    }
  });
  $("prompt-count").textContent = state.prompts.length ? `${state.prompts.length} region${state.prompts.length === 1 ? "" : "s"}` : "no region drawn";
}

function buildTools() {
  const tools = $("prompt-tools");
  const buttons = Object.entries(PROMPT_TOOLS).map(([kind, tool]) => {
    const b = document.createElement("button");
    b.type = "button";
    b.className = "tool";
    b.dataset.tool = kind;
    b.textContent = tool.label;
    b.addEventListener("click", () => { state.tool = kind; markTool(); });
    return b;
  });
  const clear = document.createElement("button");
  clear.type = "button";
  clear.className = "tool";
  clear.id = "clear-prompts";
  clear.textContent = "Clear";
  clear.addEventListener("click", () => { state.prompts = []; drawPrompts(); });
  const count = document.createElement("span");
  count.id = "prompt-count";
  count.className = "muted";
  tools.replaceChildren(...buttons, clear, count);
  markTool();
  const layer = $("prompt-layer");
  layer.addEventListener("pointerdown", (event) => {
    event.preventDefault();
    layer.setPointerCapture(event.pointerId);
    state.drawing = PROMPT_TOOLS[state.tool].down(imagePoint(event));
    drawPrompts();
  });
  layer.addEventListener("pointermove", (event) => {
    if (!state.drawing) return;
    state.drawing = PROMPT_TOOLS[state.drawing.kind].move(state.drawing, imagePoint(event));
    drawPrompts();
  });
  const finish = (event) => {
    if (!state.drawing) return;
    const done = PROMPT_TOOLS[state.drawing.kind].up(state.drawing, imagePoint(event));
    state.drawing = null;
    if (done) state.prompts.push(done);
    drawPrompts();
  };
  layer.addEventListener("pointerup", finish);
  layer.addEventListener("pointercancel", () => { state.drawing = null; drawPrompts(); });
}

function markTool() {
  document.querySelectorAll("#prompt-tools [data-tool]").forEach((b) => b.classList.toggle("chosen", b.dataset.tool === state.tool));
}

function promptKinds(task) {
  // A free instruction takes the prompts any task of this model takes (a v2 model's region questions).
  const kinds = task.task === "instruction" ? [...new Set(state.tasks.flatMap((t) => t.prompts || []))] : task.prompts || [];
  return kinds.filter((kind) => kind in PROMPT_TOOLS);
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
  const free = { task: "instruction", fields: ["instruction"], prompts: [], output: "text", image: true };
  return state.tasks.find((t) => t.task === $("task").value) || free;
}

function updateFields() {
  const task = currentTask();
  document.querySelectorAll("[data-field]").forEach((el) => { el.hidden = !task.fields.includes(el.dataset.field); });
  const kinds = promptKinds(task);
  $("prompt-tools").hidden = kinds.length === 0;
  document.querySelectorAll("#prompt-tools [data-tool]").forEach((b) => { b.hidden = !kinds.includes(b.dataset.tool); });
  if (kinds.length && !kinds.includes(state.tool)) { state.tool = kinds[0]; markTool(); }
  $("input-stage").classList.toggle("prompting", kinds.length > 0);
  $("sampling").hidden = task.output !== "image";
  $("input-panel").classList.toggle("unused", task.image === false);  // generation is sent without it
  $("min-score-field").hidden = task.output === "image";
}

function sampling() {
  const options = { seed: Number($("seed").value) || 0 };
  if ($("steps").value) options.steps = Number($("steps").value);
  return options;
}

function requestBody() {
  const task = currentTask();
  const body = { render: true, min_score: Number($("min-score").value) };
  if (task.image !== false) body.image = state.image;
  if (task.output === "image") Object.assign(body, sampling());
  if (task.task === "instruction") {
    body.instruction = $("instruction").value;
    if (promptKinds(task).length && state.prompts.length) body.regions = state.prompts;
  } else {
    body.task = task.task;
    if (task.fields.includes("classes")) body.classes = $("classes").value.split(",").map((s) => s.trim()).filter(Boolean);
    if (task.fields.includes("expression")) body.expression = $("expression").value;
    if (task.fields.includes("question")) body.question = $("question").value;
    if (task.fields.includes("points")) body.points = Number($("points").value);
    if (task.fields.includes("description")) body.description = $("description").value;
    if (task.fields.includes("edit")) body.edit = $("edit").value;
    if (promptKinds(task).length) body.regions = state.prompts;
  }
  return body;
}

function showResult(result) {
  // The image made (an image answer's, or the last of a chat reply's) comes before the drawn result.
  const made = result.output === "image" ? result.image : (result.images || []).map((m) => m.image).pop() || null;
  const picture = made || result.visualization;
  state.made = made;
  $("edit-result").hidden = !made;
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
  } else if (result.output === "masks") {
    const n = result.class_names.length;
    $("answer").textContent = `${n} class${n === 1 ? "" : "es"} segmented`;
  } else if (result.output === "image") {
    $("answer").textContent = `${result.width} × ${result.height} image, seed ${result.seed}`;
  } else {
    $("answer").textContent = result.text || "";
  }
  $("detections").hidden = result.output !== "detections";
  $("raw-json").textContent = JSON.stringify(result, shortUrls, 2);
}

function shortUrls(key, value) {
  // Data URLs in the raw JSON are shown by their length: the pictures are above.
  return typeof value === "string" && value.startsWith("data:") ? `<${value.split(";")[0].slice(5)} data URL, ${value.length} characters>` : value;
}

async function run() {
  if (!state.image && currentTask().image !== false) { setStatus("Choose or upload an image first.", true); return; }
  await predict(requestBody());
}

async function applyEdit(event) {
  // An edit of the image shown as the result (the last one made), answered in its place.
  event.preventDefault();
  if (!state.made) return;
  await predict({ task: "editing", image: state.made, edit: $("result-edit").value, ...sampling() });
}

async function predict(body) {
  const buttons = [$("run"), $("apply-edit")];
  buttons.forEach((b) => { b.disabled = true; });
  document.body.dataset.state = "running";
  setStatus("Running…");
  const started = performance.now();
  try {
    const result = await api("/v1/predict", body);
    showResult(result);
    setStatus(`${result.task} in ${((performance.now() - started) / 1000).toFixed(2)} s`);
    document.body.dataset.state = "done";
  } catch (error) {
    setStatus(error.message, true);
    document.body.dataset.state = "error";
  } finally {
    buttons.forEach((b) => { b.disabled = false; });
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
  window.addEventListener("resize", drawPrompts);
  buildTools();
  $("run").addEventListener("click", run);
  $("edit-result").addEventListener("submit", applyEdit);
  $("use-result").addEventListener("click", () => {
    if (!state.made) return;
    document.querySelectorAll("#samples img").forEach((el) => el.classList.remove("chosen"));
    setImage(state.made);
  });
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
