// guardcal review console: reads GET /reviews/queue and posts verdicts to POST /reviews.
// The browser sends the review key as HTTP Basic credentials (the server asked for them on /review),
// so this script holds no secret. It shows the calibrated confidence as a band, never a number.
"use strict";

const state = { items: [], current: null, skipped: new Set(), busy: false };
const $ = (id) => document.getElementById(id);

function band(confidence) {
  if (confidence === null || confidence === undefined) return "none (no score)";
  const edges = [0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.99, 1.0];
  for (let i = 1; i < edges.length; i++) {
    if (confidence < edges[i]) return edges[i - 1] + "–" + edges[i];
  }
  return "0.99–1";
}

function age(seconds) {
  if (seconds < 90) return Math.round(seconds) + " s ago";
  if (seconds < 5400) return Math.round(seconds / 60) + " min ago";
  if (seconds < 129600) return Math.round(seconds / 3600) + " h ago";
  return Math.round(seconds / 86400) + " days ago";
}

async function api(path, options) {
  const response = await fetch(path, { credentials: "same-origin", cache: "no-store", ...options });
  const body = await response.json().catch(() => ({}));
  if (!response.ok) {
    const message = (body.error && body.error.message) || response.statusText;
    throw new Error(response.status + ": " + message);
  }
  return body;
}

async function load() {
  let after = "";
  const items = [];
  let pending = 0;
  do {  // pages until one unskipped item is found (skips live in this tab only)
    const page = await api("/reviews/queue?limit=50" + (after ? "&after=" + encodeURIComponent(after) : ""));
    pending = page.pending;
    items.push(...page.items.filter((i) => !state.skipped.has(i.id)));
    after = page.next;
  } while (after !== null && after !== undefined && items.length === 0);
  state.items = items;
  $("pending").textContent = String(pending);
  show(items[0] || null);
}

function show(item) {
  state.current = item;
  $("item").hidden = item === null;
  $("empty").hidden = item !== null;
  if (item === null) return;
  $("kind").textContent = item.kind === "audit" ? "audit sample" : "escalation";
  $("band").textContent = band(item.confidence);
  $("age").textContent = age(item.age_s);
  const redacted = item.input === undefined;
  $("text").hidden = redacted;
  $("redacted").hidden = !redacted;
  $("text").textContent = redacted ? "" : item.input;  // textContent: the input is never parsed as HTML
  $("sha").textContent = item.input_sha256;
  $("note").value = "";
}

async function answer(label) {
  const item = state.current;
  if (item === null || state.busy) return;
  state.busy = true;
  $("message").textContent = "";
  try {
    if (label === "skip") {
      state.skipped.add(item.id);
    } else {
      const note = $("note").value.trim();
      await api("/reviews", {
        method: "POST",
        headers: { "Content-Type": "application/json" },
        body: JSON.stringify(note ? { id: item.id, label, note } : { id: item.id, label }),
      });
    }
    await load();
  } catch (error) {
    $("message").textContent = "Not saved: " + error.message;
  } finally {
    state.busy = false;
  }
}

document.addEventListener("keydown", (event) => {
  if (event.target === $("note") || event.ctrlKey || event.metaKey || event.altKey) return;
  const key = event.key.toLowerCase();
  const labels = { s: "safe", u: "unsafe", k: "skip" };
  if (key in labels) {
    event.preventDefault();
    answer(labels[key]);
  }
});

window.addEventListener("DOMContentLoaded", () => {
  $("safe").addEventListener("click", () => answer("safe"));
  $("unsafe").addEventListener("click", () => answer("unsafe"));
  $("skip").addEventListener("click", () => answer("skip"));
  load().catch((error) => { $("message").textContent = error.message; });
  setInterval(() => { if (state.current === null && !state.busy) load().catch(() => {}); }, 5000);
});
