// videotag web page: pick one or more videos -> each is uploaded (multipart, with progress) to POST /v1/jobs and
// followed (GET /v1/jobs/{id}) in its own row -> ranked tags as bars + a strip of sampled frames
// (GET /v1/jobs/{id}/frames), or, for a failed job, the step where it failed in red and the reason.
// No external resources.
"use strict";
const $ = (id) => document.getElementById(id);
const STEPS = ["upload", "queued", "extracting", "predicting", "done"];
const STEP_OF = { queued: "queued", extracting: "extracting", extracted: "predicting", predicting: "predicting",
                  done: "done" };
const PERCENT = { queued: 45, extracting: 60, extracted: 80, predicting: 85, done: 100 };
const FAILED_STEP = { extract: "extracting", predict: "predicting", submit: "queued" };

$("apikey").value = localStorage.getItem("videotag-api-key") || "";

function headers() {
  const key = $("apikey").value.trim();
  localStorage.setItem("videotag-api-key", key);
  return key ? { "X-API-Key": key } : {};
}

// One row per file: its steps, bar, status line, error, frames and tags.
function newRow(file) {
  const row = $("job-row").content.firstElementChild.cloneNode(true);
  row.querySelector(".name").textContent = file.name;
  $("jobs").appendChild(row);
  return row;
}

function part(row, cls) {
  return row.querySelector(`.${cls}`);
}

// Light the steps up to `step`; a failed job lights the ones before it and marks it red, never "done".
function setStep(row, step, percent, text, failed = false) {
  const upto = STEPS.indexOf(step);
  row.querySelectorAll(".steps span").forEach((el) => {
    const i = STEPS.indexOf(el.dataset.step);
    el.classList.toggle("on", failed ? i < upto : i <= upto);
    el.classList.toggle("fail", failed && i === upto);
  });
  const bar = part(row, "progress");
  bar.value = percent;
  bar.classList.toggle("failed", failed);
  part(row, "status").textContent = text;
}

function showError(row, msg) {
  const el = part(row, "error");
  el.hidden = false;
  el.textContent = msg;
}

// Model and language pickers, filled from GET /v1/models (languages follow the chosen model).
let MODELS = [];
function fillLanguages() {
  const name = $("model").value || $("model").dataset.default;
  const m = MODELS.find((x) => x.name === name);
  const sel = $("lang");
  const keep = sel.value;
  sel.textContent = "";
  const langs = (m && m.languages) || [];
  const def = (m && m.default_language) || "";
  sel.append(new Option(def ? `${def} (default)` : "model's default", ""));
  for (const l of langs) if (l !== def) sel.append(new Option(l, l));
  if ([...sel.options].some((o) => o.value === keep)) sel.value = keep;
}
async function loadModels() {
  try {
    const body = await getJSON("/v1/models");
    MODELS = body.installed.filter((m) => m.kind === "predictor");
    const sel = $("model");
    const keep = sel.value;
    sel.textContent = "";
    sel.dataset.default = body.default;
    for (const m of MODELS) {
      const label = `${m.name}${m.name === body.default ? " (default)" : ""} · ${m.classes} classes`;
      sel.append(new Option(label, m.name === body.default ? "" : m.name));
    }
    sel.value = [...sel.options].some((o) => o.value === keep) ? keep : "";  // the server's default first
    fillLanguages();
  } catch (e) {
    console.warn("models:", e);
  }
}
$("model").addEventListener("change", fillLanguages);
$("apikey").addEventListener("change", loadModels);  // a server with API keys answers /v1/models only with one
loadModels();

function upload(row, file, opts) {
  return new Promise((resolve, reject) => {
    const form = new FormData();
    form.append("file", file, file.name);
    for (const [k, v] of Object.entries(opts)) if (v) form.append(k, String(v));
    const xhr = new XMLHttpRequest();
    xhr.open("POST", "/v1/jobs");
    for (const [k, v] of Object.entries(headers())) xhr.setRequestHeader(k, v);
    xhr.upload.onprogress = (e) => {
      if (e.lengthComputable) setStep(row, "upload", Math.round(40 * e.loaded / e.total), `uploading ${file.name}…`);
    };
    xhr.onload = () => {
      let body = {};
      try { body = JSON.parse(xhr.responseText); } catch (_) { /* not JSON */ }
      if (xhr.status === 202) resolve(body);
      else reject(new Error(`${xhr.status}: ${body.detail || xhr.statusText}`));
    };
    xhr.onerror = () => reject(new Error("network error during upload"));
    xhr.send(form);
  });
}

async function getJSON(url) {
  const r = await fetch(url, { headers: headers() });
  const body = await r.json().catch(() => ({}));
  if (!r.ok) throw new Error(`${r.status}: ${body.detail || r.statusText}`);
  return body;
}

function renderTags(row, job) {
  const ol = part(row, "tags");
  ol.textContent = "";
  for (const t of job.result.tags) {
    const li = document.createElement("li");
    li.className = "tag";
    li.dataset.classId = t.class_id;
    const name = document.createElement("span");
    name.className = "name";
    name.textContent = t.class_name;
    name.title = `class ${t.class_id}`;
    const track = document.createElement("span");
    track.className = "track";
    const bar = document.createElement("span");
    bar.className = "bar";
    bar.style.width = `${(100 * t.probability).toFixed(1)}%`;
    bar.style.display = "block";
    track.appendChild(bar);
    const p = document.createElement("span");
    p.className = "p";
    p.textContent = t.probability.toFixed(3);
    li.append(name, track, p);
    ol.appendChild(li);
  }
  const tm = job.timings || {};
  part(row, "timing").textContent = tm.total_s !== undefined ?
    `total ${tm.total_s.toFixed(2)} s (extract ${(tm.extract_s || 0).toFixed(2)} s, predict ${(tm.predict_s || 0).toFixed(3)} s)` : "";
  part(row, "tags-box").hidden = false;
}

async function renderFrames(row, jobId) {
  try {
    const body = await getJSON(`/v1/jobs/${encodeURIComponent(jobId)}/frames`);
    const box = part(row, "frames");
    box.textContent = "";
    for (const f of body.frames) {
      const fig = document.createElement("figure");
      const img = document.createElement("img");
      img.src = f.data_url;
      img.alt = `frame ${f.index}`;
      const cap = document.createElement("figcaption");
      cap.textContent = `#${f.index}`;
      fig.append(img, cap);
      box.appendChild(fig);
    }
    part(row, "frames-box").hidden = body.frames.length === 0;
  } catch (e) {
    console.warn("frames:", e);  // e.g. 422 for a file that is not a video: the job's own error says why
  }
}

async function follow(row, jobId) {
  let step = "queued";
  for (;;) {
    const job = await getJSON(`/v1/jobs/${encodeURIComponent(jobId)}`);
    if (job.status === "failed") {
      const failedAt = FAILED_STEP[job.error && job.error.stage] || step;
      setStep(row, failedAt, PERCENT[failedAt] || 45, `job ${job.job_id}: failed`, true);
      return job;
    }
    step = STEP_OF[job.status] || "queued";
    setStep(row, step, PERCENT[job.status] || 45, `job ${job.job_id}: ${job.status}`);
    if (job.status === "done") return job;
    await new Promise((r) => setTimeout(r, 300));
  }
}

// Upload the files one after the other (a shared uplink), follow each job as soon as it exists.
async function run(row, file, opts, uploaded) {
  try {
    setStep(row, "upload", 0, `uploading ${file.name}…`);
    const job = await upload(row, file, opts);
    uploaded();
    row.dataset.jobId = job.job_id;
    const framesDone = renderFrames(row, job.job_id);  // decodes while the workers run
    const final = await follow(row, job.job_id);
    if (final.status === "failed") showError(row, `${final.error.code}: ${final.error.reason}`);
    else renderTags(row, final);
    await framesDone;
    row.dataset.state = final.status;
  } catch (e) {
    uploaded();
    showError(row, String(e.message || e));
    setStep(row, "upload", 0, `${file.name}: not submitted`, true);
    row.dataset.state = "error";
  }
}

$("form").addEventListener("submit", async (ev) => {
  ev.preventDefault();
  const files = [...$("file").files];
  if (!files.length) return;
  $("submit").disabled = true;
  delete document.body.dataset.state;
  $("jobs").textContent = "";
  const opts = { topk: parseInt($("topk").value, 10) || undefined, model: $("model").value, lang: $("lang").value };
  const runs = [];
  try {
    for (const file of files) {
      const row = newRow(file);
      let uploaded;
      const done = new Promise((r) => { uploaded = r; });
      runs.push(run(row, file, opts, uploaded));
      await done;  // next upload once this one is through (its job is followed meanwhile)
    }
    await Promise.all(runs);
  } finally {
    const states = [...document.querySelectorAll("#jobs .job")].map((r) => r.dataset.state);
    // the page's overall state: done only when every file was tagged
    document.body.dataset.state = states.includes("error") ? "error" : states.includes("failed") ? "failed" : "done";
    $("submit").disabled = false;
  }
});
