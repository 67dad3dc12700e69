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

// Genus and species names are italic (binomial nomenclature); higher ranks and common names are not.
function scientific(text, rank) {
  return rank === "genus" || rank === "species" ? el("i", "", text) : document.createTextNode(text);
}

// A taxon's name as nodes: "Genus epithet (common name)" at species rank, else the rank's own name.
function taxonName(row, rank) {
  const span = el("span", "taxon");
  if (rank === "species") {
    span.append(scientific(row.species, "species"));
    if (row.common_name) span.append(document.createTextNode(` (${row.common_name})`));
  } else {
    span.append(row[rank] ? scientific(row[rank], rank) : document.createTextNode("(unnamed)"));
  }
  return span;
}

// The names along a row's own path, kingdom first, down to the rank it answers.
function pathOf(row) {
  const parts = RANKS.slice(0, 6).map((rank) => [rank, row[rank]]).filter(([, name]) => name);
  if (row.species_epithet) parts.push(["species", row.species_epithet]);
  return parts;
}

function lineage(row) {
  const line = el("p", "lineage");
  pathOf(row).forEach(([rank, name], i) => {
    if (i) line.append(document.createTextNode(" › "));
    line.append(scientific(name, rank));
  });
  line.title = line.textContent;
  return line;
}

// True when `row` (an answer at `rank`) lies on the path of `anchor` (the roll-up or best answer).
function onPath(row, rank, anchor) {
  const depth = RANKS.indexOf(rank);
  return RANKS.slice(0, Math.min(depth + 1, 6)).every((r) => (row[r] || "") === (anchor[r] || ""))
    && (rank !== "species" || row.species_epithet === anchor.species_epithet);
}

function percent(score) {
  return `${(100 * score).toFixed(score >= 0.1 ? 1 : 2)}%`;
}

function bar(label, score) {
  const item = el("li", "answer");
  const name = el("span", "name");
  if (typeof label === "string") name.textContent = label; else name.append(label);
  name.title = name.textContent;  // the full name, also when the line is cut with an ellipsis
  item.append(name, el("span", "score", percent(score)));
  const track = el("div", "track");
  const fill = el("div", "fill");
  fill.style.width = `${Math.max(0.5, 100 * score)}%`;
  track.append(fill);
  item.append(track);
  return item;
}

// The roll-up answer with its own path (never the lineage of a less likely species below it); without a
// roll-up, the best answer at the deepest rank shown, with its path.
function renderTree(card, result) {
  const best = result.rows.find((row) => rankOf(row) === "species") || result.rows[result.rows.length - 1];
  const anchor = result.rollup && result.rollup.rank !== "unknown" ? result.rollup : best;
  if (result.rollup) {
    const strong = el("strong");
    strong.append(result.rollup.rank === "unknown" ? document.createTextNode("unknown")
      : taxonName(result.rollup, result.rollup.rank));
    const summary = el("p", "rollup");
    summary.append(el("span", "muted", "Roll-up answer: "), strong,
      el("span", "muted", ` (${result.rollup.rank}, ${percent(result.rollup.score)})`));
    card.append(summary);
  }
  if (anchor && (!result.rollup || result.rollup.rank !== "unknown")) card.append(lineage(anchor));
  const prior = (result.rollup || best || {}).prior;
  if (prior) card.append(el("p", "muted", `Location prior: ${prior}`));
  const grid = el("div", "ranks");
  for (const rank of RANKS) {
    const rows = result.rows.filter((row) => rankOf(row) === rank);
    if (!rows.length) continue;
    const block = el("div", "rank");
    block.append(el("h3", "", rank));
    const list = el("ol");
    rows.forEach((row) => {
      const item = list.appendChild(bar(taxonName(row, rank), row.score));
      if (anchor && onPath(row, rank, anchor)) item.classList.add("on-path");  // the headline answer's path
    });
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
    form.append("rank", $("rank").value || "all");
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
    if (result.error) throw new Error(result.error);
    collected.push({ ...result, model: data.model });
    $("downloads").hidden = false;
    (labels ? renderLabels : renderTree)(body, result);
  } catch (error) {
    waiting.remove();
    body.append(el("p", "error", `Could not identify: ${error.message}`));
  }
  body.parentElement.classList.remove("pending");
}

// Every answer shown so far, for the downloads: one CSV row per answer (the roll-up row has kind "rollup").
const collected = [];
const CSV_COLUMNS = ["file_name", "kind", "rank", ...RANKS.slice(0, 6), "species_epithet", "species",
  "common_name", "classification", "score", "error", "model"];

function csvCell(value) {
  const text = value === undefined || value === null ? "" : String(value);
  return /[",\r\n]/.test(text) ? `"${text.replace(/"/g, '""')}"` : text;
}

function resultsCsv() {
  const lines = [CSV_COLUMNS.join(",")];
  for (const result of collected) {
    const rows = result.rows.map((row) => ({ ...row, kind: "answer", rank: row.rank || rankOf(row) || "label" }));
    if (result.rollup) rows.push({ ...result.rollup, kind: "rollup" });
    for (const row of rows) {
      const full = { ...row, file_name: result.file_name, model: result.model };
      lines.push(CSV_COLUMNS.map((column) => csvCell(full[column])).join(","));
    }
  }
  return lines.join("\r\n") + "\r\n";
}

function download(name, type, text) {
  const link = el("a");
  link.href = URL.createObjectURL(new Blob([text], { type }));
  link.download = name;
  document.body.append(link);
  link.click();
  link.remove();
  setTimeout(() => URL.revokeObjectURL(link.href), 1000);
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
    $("model-info").title = info.model;
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
  $("download-csv").addEventListener("click", () => download("treeclip-results.csv", "text/csv", resultsCsv()));
  $("download-json").addEventListener("click", () => download("treeclip-results.json", "application/json",
    JSON.stringify(collected, null, 2)));
  showInfo();
}

document.addEventListener("DOMContentLoaded", setup);
