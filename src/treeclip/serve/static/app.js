// treeclip web page: uploads photos to /v1/predict and renders the answers (no external assets).
"use strict";

const RANKS = ["kingdom", "phylum", "class", "order", "family", "genus", "species"];
const $ = (id) => document.getElementById(id);

function el(tag, className, text) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== undefined) node.textContent = text;
  return node;
}

// The rank a prediction row answers at: the deepest rank column it carries.
function rankOf(row) {
  if ("species_epithet" in row) return "species";
  for (let i = RANKS.length - 2; i >= 0; i--) if (RANKS[i] in row) return RANKS[i];
  return "";
}

function taxonName(row, rank) {
  if (rank === "species") return row.species + (row.common_name ? ` (${row.common_name})` : "");
  return row[rank] || "(unnamed)";
}

function lineage(row) {
  const parts = RANKS.slice(0, 6).map((rank) => row[rank]).filter(Boolean);
  if (row.species_epithet) parts.push(row.species_epithet);
  return parts.join(" › ");
}

function percent(score) {
  return `${(100 * score).toFixed(score >= 0.1 ? 1 : 2)}%`;
}

function bar(label, score) {
  const item = el("li", "answer");
  const name = el("span", "name", label);
  name.title = label;
  item.append(name, el("span", "score", percent(score)));
  const track = el("div", "track");
  const fill = el("div", "fill");
  fill.style.width = `${Math.max(0.5, 100 * score)}%`;
  track.append(fill);
  item.append(track);
  return item;
}

function renderTree(card, result) {
  const best = result.rows.find((row) => rankOf(row) === "species") || result.rows[result.rows.length - 1];
  if (result.rollup) {
    const answer = result.rollup.rank === "unknown" ? "unknown"
      : taxonName(result.rollup, result.rollup.rank);
    const summary = el("p", "rollup");
    summary.append(el("span", "muted", "Roll-up answer: "), el("strong", "", answer),
      el("span", "muted", ` (${result.rollup.rank}, ${percent(result.rollup.score)})`));
    card.append(summary);
  }
  if (best) card.append(el("p", "lineage", lineage(best)));
  const prior = (result.rollup || best || {}).prior;
  if (prior) card.append(el("p", "muted", `Location prior: ${prior}`));
  const grid = el("div", "ranks");
  for (const rank of RANKS) {
    const rows = result.rows.filter((row) => rankOf(row) === rank);
    if (!rows.length) continue;
    const block = el("div", "rank");
    block.append(el("h3", "", rank));
    const list = el("ol");
    rows.forEach((row) => list.append(bar(taxonName(row, rank), row.score)));
    block.append(list);
    grid.append(block);
  }
  card.append(grid);
}

function renderLabels(card, result) {
  const list = el("ol", "labels");
  result.rows.forEach((row) => list.append(bar(row.classification, row.score)));
  card.append(list);
}

function newCard(file) {
  const card = el("article", "card pending");
  const image = el("img", "thumb");
  image.alt = file.name;
  image.src = URL.createObjectURL(file);
  image.onload = () => URL.revokeObjectURL(image.src);
  const body = el("div", "body");
  body.append(el("h2", "", file.name), el("p", "muted", "identifying…"));
  card.append(image, body);
  $("results").prepend(card);
  return body;
}

function appendLocation(form) {
  const parts = $("location").value.split(",").map((part) => part.trim()).filter(Boolean);
  if (parts.length === 2) {
    form.append("lat", parts[0]);
    form.append("lon", parts[1]);
  }
  if ($("use-gps").checked) form.append("use_photo_gps", "true");
}

async function identify(file) {
  const body = newCard(file);
  const labels = $("labels").value.trim();
  const form = new FormData();
  form.append("files", file, file.name);
  form.append("k", $("k").value || "3");
  if (labels) {
    form.append("labels", labels);
  } else {
    form.append("rank", "all");
    if ($("rollup").value) form.append("rollup", $("rollup").value);
    appendLocation(form);
  }
  const waiting = body.lastChild;
  try {
    const response = await fetch("/v1/predict", { method: "POST", body: form });
    const data = await response.json();
    waiting.remove();
    if (!response.ok) throw new Error(typeof data.detail === "string" ? data.detail : JSON.stringify(data.detail));
    const result = data.results[0];
    (labels ? renderLabels : renderTree)(body, result);
  } catch (error) {
    waiting.remove();
    body.append(el("p", "error", `Could not identify: ${error.message}`));
  }
  body.parentElement.classList.remove("pending");
}

async function identifyAll(files) {
  const images = Array.from(files);
  for (let i = 0; i < images.length; i++) {
    $("status").textContent = `Identifying ${i + 1} of ${images.length}…`;
    await identify(images[i]);
  }
  $("status").textContent = images.length ? `Done: ${images.length} photo(s).` : "";
}

async function showInfo() {
  try {
    const info = await (await fetch("/v1/info")).json();
    $("model-info").textContent = `Model ${info.model} · ${info.bank_size} taxa in the label bank`;
  } catch (error) {
    $("model-info").textContent = "Model information unavailable.";
  }
}

function setup() {
  const drop = $("drop");
  const input = $("file-input");
  input.addEventListener("change", () => { identifyAll(input.files); input.value = ""; });
  ["dragenter", "dragover"].forEach((name) => drop.addEventListener(name, (event) => {
    event.preventDefault();
    drop.classList.add("over");
  }));
  ["dragleave", "drop"].forEach((name) => drop.addEventListener(name, () => drop.classList.remove("over")));
  drop.addEventListener("drop", (event) => {
    event.preventDefault();
    identifyAll(event.dataTransfer.files);
  });
  drop.addEventListener("keydown", (event) => {
    if (event.key === "Enter" || event.key === " ") { event.preventDefault(); input.click(); }
  });
  $("options").addEventListener("submit", (event) => event.preventDefault());
  showInfo();
}

document.addEventListener("DOMContentLoaded", setup);
