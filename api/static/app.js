// videotag web page: upload (multipart, with progress) -> POST /v1/jobs -> poll GET /v1/jobs/{id}
// -> ranked tags as bars + a strip of sampled frames (GET /v1/jobs/{id}/frames). No external resources.
"use strict";
const $ = (id) => document.getElementById(id);
const STEPS = ["upload", "queued", "extracting", "predicting", "done"];
const STEP_OF = { queued: "queued", extracting: "extracting", extracted: "predicting", predicting: "predicting",
                  done: "done", failed: "done" };
const PERCENT = { queued: 45, extracting: 60, extracted: 80, predicting: 85, done: 100, failed: 100 };

$("apikey").value = localStorage.getItem("videotag-api-key") || "";

function headers() {
  const key = $("apikey").value.trim();
  localStorage.setItem("videotag-api-key", key);
  return key ? { "X-API-Key": key } : {};
}

function setStep(step, percent, text) {
  $("progress-box").hidden = false;
  const upto = STEPS.indexOf(step);
  document.querySelectorAll(".steps span").forEach((el) => {
    el.classList.toggle("on", STEPS.indexOf(el.dataset.step) <= upto);
  });
  $("progress").value = percent;
  $("status").textContent = text;
}

function showError(msg) {
  $("error").hidden = false;
  $("error").textContent = msg;
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

function upload(file, topk) {
  return new Promise((resolve, reject) => {
    const form = new FormData();
    form.append("file", file, file.name);
    if (topk) form.append("topk", String(topk));
    if ($("model").value) form.append("model", $("model").value);
    if ($("lang").value) form.append("lang", $("lang").value);
    const xhr = new XMLHttpRequest();
    xhr.open("POST", "/v1/jobs");
    for (const [k, v] of Object.entries(headers())) xhr.setRequestHeader(k, v);
    xhr.upload.onprogress = (e) => {
      if (e.lengthComputable) setStep("upload", Math.round(40 * e.loaded / e.total), `uploading ${file.name}…`);
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

function renderTags(job) {
  const ol = $("tags");
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
  $("timing").textContent = tm.total_s !== undefined ?
    `total ${tm.total_s.toFixed(2)} s (extract ${(tm.extract_s || 0).toFixed(2)} s, predict ${(tm.predict_s || 0).toFixed(3)} s)` : "";
  $("tags-box").hidden = false;
}

async function renderFrames(jobId) {
  try {
    const body = await getJSON(`/v1/jobs/${encodeURIComponent(jobId)}/frames`);
    const box = $("frames");
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
    $("frames-box").hidden = body.frames.length === 0;
  } catch (e) {
    console.warn("frames:", e);
  }
}

async function follow(jobId) {
  for (;;) {
    const job = await getJSON(`/v1/jobs/${encodeURIComponent(jobId)}`);
    setStep(STEP_OF[job.status] || "queued", PERCENT[job.status] || 45, `job ${job.job_id}: ${job.status}`);
    if (job.status === "done" || job.status === "failed") return job;
    await new Promise((r) => setTimeout(r, 300));
  }
}

$("form").addEventListener("submit", async (ev) => {
  ev.preventDefault();
  const file = $("file").files[0];
  if (!file) return;
  $("submit").disabled = true;
  $("error").hidden = true;
  $("tags-box").hidden = true;
  $("frames-box").hidden = true;
  try {
    setStep("upload", 0, `uploading ${file.name}…`);
    const job = await upload(file, parseInt($("topk").value, 10) || undefined);
    const framesDone = renderFrames(job.job_id);  // decodes while the workers run
    const final = await follow(job.job_id);
    if (final.status === "failed") {
      showError(`${final.error.code}: ${final.error.reason}`);
    } else {
      renderTags(final);
    }
    await framesDone;
    document.body.dataset.state = final.status;
  } catch (e) {
    showError(String(e.message || e));
    document.body.dataset.state = "error";
  } finally {
    $("submit").disabled = false;
  }
});
