/* zcoin explorer: one page, hash routing, live from /api/events.
 *
 * The overview (#/) shows the cluster as the explorer sees it: /api/cluster (nodes and the
 * block tree), /api/blocks and /api/mempool, fetched again when the event stream says
 * something changed (a block, a tip, a reorg, a node up or down; transactions at most once a
 * second), never more than a few times a second, and every few seconds anyway.
 * #/block/HASH, #/tx/TXID and #/address/ADDR render into #view.
 *
 * Every string that comes from the network goes into the DOM as a text node (el() below);
 * nothing is parsed as HTML.
 */
"use strict";

const COIN = 100000000;
const MIN_REFRESH_GAP_MS = 350;      // at most ~3 overview fetches a second, however many events arrive
const TX_REFRESH_GAP_MS = 1000;      // tx events refresh the overview at most once a second
const PERIODIC_REFRESH_MS = 3000;    // hash rates and peer lists change without events
const STREAM_RETRY_MS = 3000;        // when the browser gives up on the stream (it retries by itself otherwise)
const ACTIVITY_LINES = 12;
const RECENT_TXS = 6;
const TXS_PAGE = 25;                 // esplora's /block/:hash/txs page size
const SVG_NS = "http://www.w3.org/2000/svg";
const BADGE_COLOURS = ["#2563eb", "#d97706", "#059669", "#db2777", "#7c3aed", "#0891b2", "#65a30d", "#dc2626"];

const state = {
  cluster: null,        // the last /api/cluster answer
  tipHeight: null,      // the primary node's height
  nodeColours: new Map(),
  renderToken: 0,       // bumps on each navigation; a slow render for an older route is dropped
  renderedTip: null,    // the tip height the current detail page was rendered at
};

// ---- DOM helpers: text only -------------------------------------------------------------------

/** An element with attributes and children; strings become text nodes. */
function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  setAttrs(node, attrs);
  append(node, children);
  return node;
}

function svg(tag, attrs, ...children) {
  const node = document.createElementNS(SVG_NS, tag);
  setAttrs(node, attrs);
  append(node, children);
  return node;
}

function setAttrs(node, attrs) {
  for (const [key, value] of Object.entries(attrs || {})) {
    if (value === null || value === undefined || value === false) continue;
    if (key === "dataset") Object.assign(node.dataset, value);
    else if (key === "text") node.textContent = String(value);
    else node.setAttribute(key, String(value));
  }
}

function append(node, children) {
  for (const child of children.flat(Infinity)) {
    if (child === null || child === undefined || child === false) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
}

/** Replace the children of `node`. */
function fill(node, ...children) {
  node.replaceChildren();
  append(node, children);
}

/** A link to a page of this explorer: the target is always "#/KIND/<encoded id>". */
function link(kind, id, text, cls) {
  return el("a", {href: `#/${kind}/${encodeURIComponent(id)}`, class: cls}, text);
}

const blockLink = (hash, text) => link("block", hash, text === undefined ? hash : text, "block-link hash");
const txLink = (txid, text) => link("tx", txid, text === undefined ? txid : text, "tx-link hash");
const addressLink = (address) => link("address", address, address, "address-link hash");

// ---- formatting -------------------------------------------------------------------------------

function shortHash(hash) {
  if (typeof hash !== "string") return "–";
  return hash.length > 16 ? `${hash.slice(0, 6)}…${hash.slice(-6)}` : hash;
}

function coins(value) {
  if (typeof value !== "number") return "–";
  const sign = value < 0 ? "-" : "";
  const abs = Math.abs(value);
  const whole = Math.floor(abs / COIN).toLocaleString("en-US");
  const frac = String(abs % COIN).padStart(8, "0");
  return `${sign}${whole}.${frac}`;
}

/** An amount in coins, its base units in the tooltip. */
function amount(value, cls) {
  return el("span", {class: `amount ${cls || ""}`, title: typeof value === "number" ? `${value} base units` : null},
            coins(value));
}

function bytes(n) {
  if (typeof n !== "number") return "–";
  if (n < 1000) return `${n} B`;
  if (n < 1e6) return `${(n / 1e3).toFixed(1)} kB`;
  return `${(n / 1e6).toFixed(2)} MB`;
}

function hashrate(h) {
  if (typeof h !== "number" || !(h > 0)) return "–";
  const units = ["H/s", "kH/s", "MH/s", "GH/s", "TH/s"];
  let i = 0;
  while (h >= 1000 && i < units.length - 1) { h /= 1000; i += 1; }
  return `${h.toFixed(h < 10 ? 2 : 1)} ${units[i]}`;
}

function age(seconds) {
  if (typeof seconds !== "number") return "–";
  const s = Math.max(0, Math.round(Date.now() / 1000 - seconds));
  if (s < 60) return `${s} s ago`;
  if (s < 3600) return `${Math.floor(s / 60)} min ago`;
  if (s < 86400) return `${Math.floor(s / 3600)} h ago`;
  return `${Math.floor(s / 86400)} d ago`;
}

/** An age that the clock keeps current (see tickAges). */
function ageSpan(seconds) {
  return el("span", {class: "age", title: dateTime(seconds), dataset: {time: String(seconds)}}, age(seconds));
}

function dateTime(seconds) {
  return typeof seconds === "number" ? new Date(seconds * 1000).toLocaleString() : "–";
}

function plural(n, one, many) {
  return `${n} ${n === 1 ? one : many || `${one}s`}`;
}

function nodeColour(name) {
  if (!state.nodeColours.has(name)) {
    state.nodeColours.set(name, BADGE_COLOURS[state.nodeColours.size % BADGE_COLOURS.length]);
  }
  return state.nodeColours.get(name);
}

function badge(name) {
  return el("span", {class: "badge", style: `background:${nodeColour(name)}`, title: `tip of ${name}`}, name);
}

// ---- the API ----------------------------------------------------------------------------------

class ApiError extends Error {
  constructor(status, code, reason) {
    super(reason || code || `HTTP ${status}`);
    this.status = status;
    this.code = code;
  }
}

async function request(path) {
  let response;
  try {
    response = await fetch(path, {headers: {Accept: "application/json"}, cache: "no-store"});
  } catch (err) {
    throw new ApiError(0, "unreachable", "the explorer does not answer");
  }
  if (!response.ok) {
    let body = {};
    try { body = await response.json(); } catch (err) { /* not JSON: keep the status */ }
    throw new ApiError(response.status, body.error, body.reason);
  }
  return response;
}

const getJSON = async (path) => (await request(path)).json();
const getText = async (path) => (await request(path)).text();
const api = (...parts) => `/api/${parts.map((p) => encodeURIComponent(String(p))).join("/")}`;

// ---- the overview -----------------------------------------------------------------------------

/** The overview's parts: where each comes from, how it is drawn, and how a failure shows before any data. */
const OVERVIEW_PARTS = [
  {path: "/api/cluster", render: renderCluster,
   failed: (err) => fill(document.getElementById("nodes"), errorRow(8, err))},
  {path: "/api/blocks", render: renderBlocks,
   failed: (err) => fill(document.getElementById("blocks"), errorRow(7, err))},
  {path: "/api/mempool", render: renderMempool,
   failed: (err) => fill(document.getElementById("mempool"), el("p", {class: "error"}, err.message))},
];

async function refreshOverview() {
  const results = await Promise.allSettled(OVERVIEW_PARTS.map((part) => getJSON(part.path)));
  const errors = [];
  results.forEach((result, i) => {
    const part = OVERVIEW_PARTS[i];
    if (result.status === "fulfilled") {
      part.render(result.value);
      part.shown = true;
    } else {
      errors.push(result.reason.message);
      if (!part.shown) part.failed(result.reason);  // a failure keeps what was shown before
    }
  });
  showNotice(errors.length ? `Could not refresh: ${[...new Set(errors)].join("; ")}. ` +
    "What is shown may be out of date." : null);
  const [cluster, blocks] = results;
  const height = primaryHeight(cluster.value, blocks.value);
  if (height !== null) {
    state.tipHeight = height;
    document.getElementById("tip-height").textContent = String(height);
  }
  if (state.renderedTip !== null && state.tipHeight !== state.renderedTip && currentRoute().kind !== "overview") {
    renderRoute({quiet: true}); // confirmations and statuses change with the tip
  }
}

function showNotice(text) {
  const notice = document.getElementById("notice");
  notice.hidden = !text;
  notice.textContent = text || "";
}

/** The primary (first answering) node's height; else the newest block the API serves. */
function primaryHeight(cluster, blocks) {
  const up = cluster && (cluster.nodes || []).find((n) => n.up && typeof n.height === "number");
  if (up) return up.height;
  if (Array.isArray(blocks) && blocks.length) return blocks[0].height;
  return null;
}

function errorRow(columns, err) {
  return el("tr", {class: "empty"}, el("td", {colspan: columns, class: "error"}, err.message));
}

function renderCluster(cluster) {
  state.cluster = cluster;
  document.getElementById("network").textContent = cluster.network || "";
  const rows = (cluster.nodes || []).map(nodeRow);
  fill(document.getElementById("nodes"), rows.length ? rows : el("tr", {class: "empty"},
    el("td", {colspan: 8}, "no nodes")));
  renderTree(cluster.tree || {blocks: [], tips: {}});
}

function nodeRow(node) {
  const peers = node.peers || [];
  const peerText = peers.map((p) => `${p.node}: height ${p.height}, score ${p.score}${p.banned ? ", banned" : ""}`);
  const stateText = !node.up ? "down" : node.synced === false ? "syncing" : "up";
  return el("tr", {dataset: {node: node.name}, class: node.up ? "" : "is-down"},
    el("td", {}, el("span", {class: "swatch", style: `background:${nodeColour(node.name)}`}),
       el("span", {class: "node-name", title: node.api || null}, node.name)),
    el("td", {}, el("span", {class: `pill state-${stateText}`, title: node.error || null}, stateText)),
    el("td", {class: "num height"}, node.height ?? "–"),
    el("td", {class: "tip"}, node.tip ? blockLink(node.tip, shortHash(node.tip)) : "–"),
    el("td", {class: "num peers", title: peerText.join("\n") || "no peers"}, peers.length),
    el("td", {class: "num mempool", title: node.mempool_bytes != null ? bytes(node.mempool_bytes) : null},
       node.mempool ?? "–"),
    el("td", {class: "num"}, hashrate(node.hashrate)),
    el("td", {class: "mining"}, node.mining_mode || "–"));
}

function renderBlocks(blocks) {
  const firstSeen = new Map(((state.cluster && state.cluster.tree && state.cluster.tree.blocks) || [])
    .map((b) => [b.hash, b.first_seen_by]));
  const rows = blocks.map((b) => el("tr", {dataset: {hash: b.id}},
    el("td", {class: "num"}, b.height),
    el("td", {}, blockLink(b.id, shortHash(b.id))),
    el("td", {}, ageSpan(b.timestamp)),
    el("td", {class: "num"}, b.tx_count),
    el("td", {class: "num"}, bytes(b.size)),
    el("td", {class: "num"}, amount(b.fees)),
    el("td", {}, firstSeen.get(b.id) || "")));
  fill(document.getElementById("blocks"), rows.length ? rows : el("tr", {class: "empty"},
    el("td", {colspan: 7}, "no blocks yet")));
}

function renderMempool(pool) {
  const histogram = (pool.fee_histogram || []).slice(0, 8);
  const biggest = Math.max(1, ...histogram.map(([, vsize]) => vsize));
  fill(document.getElementById("mempool"),
    el("dl", {class: "facts"},
      el("dt", {}, "transactions"), el("dd", {class: "mempool-count"}, pool.count ?? 0),
      el("dt", {}, "size"), el("dd", {}, bytes(pool.vsize)),
      el("dt", {}, "fees"), el("dd", {}, amount(pool.total_fee))),
    histogram.length ? el("div", {class: "histogram", title: "fee rate (base units per byte) and bytes waiting"},
      histogram.map(([rate, vsize]) => el("div", {class: "bar-row"},
        el("span", {class: "bar-label"}, `≥ ${Math.round(rate * 10) / 10}/B`),
        el("span", {class: "bar", style: `width:${Math.max(2, Math.round(100 * vsize / biggest))}%`}),
        el("span", {class: "bar-value"}, bytes(vsize))))) : null);
}

// ---- the block tree ---------------------------------------------------------------------------

const TREE = {col: 96, box: 76, boxH: 24, badgeH: 17, top: 22, pad: 8};

/** Lanes: the best branch (highest, then most nodes on it) is lane 0; each other branch gets the next
 *  lane down to where it joins a branch already drawn. */
function layoutTree(tree) {
  const byHash = new Map(tree.blocks.map((b) => [b.hash, b]));
  const hasChild = new Set(tree.blocks.map((b) => b.prev).filter((p) => byHash.has(p)));
  const tipCount = new Map();
  for (const hash of Object.values(tree.tips || {})) tipCount.set(hash, (tipCount.get(hash) || 0) + 1);
  const leaves = tree.blocks.filter((b) => !hasChild.has(b.hash)).sort((a, b) =>
    (b.height - a.height) || ((tipCount.get(b.hash) || 0) - (tipCount.get(a.hash) || 0)) || (a.time - b.time));
  const lane = new Map();
  let lanes = 0;
  for (const leaf of leaves) {
    for (let b = leaf; b && !lane.has(b.hash); b = byHash.get(b.prev)) lane.set(b.hash, lanes);
    lanes += 1;
  }
  return {byHash, lane, lanes, tipCount};
}

function renderTree(tree) {
  const box = document.getElementById("tree");
  if (!tree.blocks || !tree.blocks.length) {
    fill(box, el("p", {class: "muted"}, "no blocks seen yet"));
    return;
  }
  const {byHash, lane, lanes} = layoutTree(tree);
  const onTip = new Map();  // hash -> node names
  for (const [name, hash] of Object.entries(tree.tips || {})) {
    if (byHash.has(hash)) onTip.set(hash, [...(onTip.get(hash) || []), name]);
  }
  const heights = tree.blocks.map((b) => b.height);
  const low = Math.min(...heights);
  const high = Math.max(...heights);
  // A lane is as tall as its block plus the most badges stacked under one of its blocks.
  const laneHeight = Array(lanes).fill(TREE.boxH + TREE.pad * 2);
  for (const [hash, names] of onTip) {
    const l = lane.get(hash);
    laneHeight[l] = Math.max(laneHeight[l], TREE.boxH + TREE.pad * 2 + names.length * TREE.badgeH);
  }
  const laneY = [];
  laneHeight.reduce((y, h, i) => { laneY[i] = y; return y + h; }, TREE.top);
  const width = (high - low + 1) * TREE.col + TREE.pad;
  const height = laneY[lanes - 1] + laneHeight[lanes - 1];
  const x = (b) => TREE.pad + (b.height - low) * TREE.col;
  const y = (b) => laneY[lane.get(b.hash)] + TREE.pad;

  const picture = svg("svg", {width, height, viewBox: `0 0 ${width} ${height}`, role: "img",
                              "aria-label": "block tree of the last heights"});
  for (let h = low; h <= high; h += 1) {
    picture.append(svg("text", {x: TREE.pad + (h - low) * TREE.col + TREE.box / 2, y: 14, class: "axis"}, h));
  }
  for (const b of tree.blocks) {  // edges first, under the boxes
    const parent = byHash.get(b.prev);
    if (!parent) continue;
    const x1 = x(parent) + TREE.box, y1 = y(parent) + TREE.boxH / 2, x2 = x(b), y2 = y(b) + TREE.boxH / 2;
    const bend = x1 + (x2 - x1) / 2;
    picture.append(svg("path", {d: `M${x1},${y1} C${bend},${y1} ${bend},${y2} ${x2},${y2}`,
                                class: lane.get(b.hash) === 0 ? "edge main" : "edge"}));
  }
  for (const b of tree.blocks) {
    const names = onTip.get(b.hash) || [];
    const group = svg("a", {href: `#/block/${encodeURIComponent(b.hash)}`, class: "tree-block",
                            "data-hash": b.hash},
      svg("title", {}, `block ${b.height} ${b.hash}\nfirst seen by ${b.first_seen_by || "?"}`),
      svg("rect", {x: x(b), y: y(b), width: TREE.box, height: TREE.boxH, rx: 4,
                   class: lane.get(b.hash) === 0 ? "block main" : "block side"}),
      svg("text", {x: x(b) + TREE.box / 2, y: y(b) + TREE.boxH / 2 + 4, class: "label"}, `…${b.hash.slice(-6)}`));
    picture.append(group);
    names.sort().forEach((name, i) => {
      const by = y(b) + TREE.boxH + 3 + i * TREE.badgeH;
      picture.append(svg("g", {class: "tree-badge", "data-node": name},
        svg("rect", {x: x(b) + 2, y: by, width: TREE.box - 4, height: TREE.badgeH - 3, rx: 7,
                     fill: nodeColour(name)}),
        svg("text", {x: x(b) + TREE.box / 2, y: by + 11, class: "badge-text"},
            name.length > 11 ? `${name.slice(0, 10)}…` : name)));
    });
  }
  fill(box, picture);
}

// ---- live events ------------------------------------------------------------------------------

let refreshTimer = null;
let refreshing = false;
let refreshAgain = false;
let lastRefresh = 0;

/** Fetch the overview again soon: at most one fetch round every MIN_REFRESH_GAP_MS, never two at once. */
function scheduleRefresh() {
  if (refreshing) { refreshAgain = true; return; }
  if (refreshTimer !== null) return;
  refreshTimer = setTimeout(runRefresh, Math.max(0, lastRefresh + MIN_REFRESH_GAP_MS - Date.now()));
}

async function runRefresh() {
  refreshTimer = null;
  refreshing = true;
  lastRefresh = Date.now();
  try {
    await refreshOverview();
  } catch (err) {
    console.warn("refresh failed", err);
  } finally {
    refreshing = false;
    if (refreshAgain) { refreshAgain = false; scheduleRefresh(); }
  }
}

let txRefreshTimer = null;

/** Transactions can arrive by the thousand a second: they refresh the overview at most once a second. */
function scheduleTxRefresh() {
  if (txRefreshTimer === null) {
    txRefreshTimer = setTimeout(() => { txRefreshTimer = null; scheduleRefresh(); }, TX_REFRESH_GAP_MS);
  }
}

function setLive(up, text) {
  const live = document.getElementById("live");
  live.classList.toggle("up", up);
  live.classList.toggle("down", !up);
  live.querySelector(".label").textContent = text;
}

function pulse() {
  const live = document.getElementById("live");
  live.classList.remove("pulse");
  void live.offsetWidth;  // restart the animation
  live.classList.add("pulse");
}

function logActivity(...parts) {
  const list = document.getElementById("activity");
  list.prepend(el("li", {}, el("span", {class: "when"}, new Date().toLocaleTimeString()), " ", ...parts));
  while (list.children.length > ACTIVITY_LINES) list.lastElementChild.remove();
}

function parseEvent(event) {
  try { return JSON.parse(event.data); } catch (err) { return null; }
}

const EVENT_HANDLERS = {
  block(data) {
    logActivity("block ", blockLink(data.hash, `${data.height} ${shortHash(data.hash)}`),
                data.node ? ` first from ${data.node}` : " (fetched)", data.tx_count != null ? ` · ${plural(data.tx_count, "tx", "txs")}` : "");
    scheduleRefresh();
  },
  tip(data) {
    logActivity(el("strong", {}, data.node), ` tip → ${data.height} `, blockLink(data.hash, shortHash(data.hash)));
    scheduleRefresh();
  },
  reorg(data) {
    logActivity(el("strong", {class: "warn"}, `reorg on ${data.node}`),
                ` at height ${data.fork_height}, ${plural(data.depth, "block")} undone`);
    scheduleRefresh();
  },
  node(data) {
    logActivity(el("strong", {}, data.node), data.up ? " is up" : el("span", {class: "warn"}, " is down"));
    scheduleRefresh();
  },
  tx(data) {
    const list = document.getElementById("recent-txs");
    list.prepend(el("li", {}, txLink(data.txid, shortHash(data.txid)),
                    el("span", {class: "muted"}, ` via ${data.node}`)));
    while (list.children.length > RECENT_TXS) list.lastElementChild.remove();
    scheduleTxRefresh();
  },
};

function connectEvents() {
  const source = new EventSource("/api/events");
  source.onopen = () => {
    setLive(true, "live");
    scheduleRefresh();  // whatever happened while the stream was down
  };
  source.onerror = () => {
    if (source.readyState === EventSource.CLOSED) {  // the browser gave up: try again ourselves
      setLive(false, "offline, retrying…");
      setTimeout(connectEvents, STREAM_RETRY_MS);
    } else {
      setLive(false, "reconnecting…");
    }
  };
  for (const [name, handler] of Object.entries(EVENT_HANDLERS)) {
    source.addEventListener(name, (event) => {
      const data = parseEvent(event);
      if (data === null) return;
      pulse();
      handler(data);
    });
  }
}

function tickAges() {
  for (const span of document.querySelectorAll(".age[data-time]")) span.textContent = age(Number(span.dataset.time));
}

// ---- routing and the detail pages ---------------------------------------------------------------

function currentRoute() {
  const match = /^#\/(block|tx|address)\/(.+)$/.exec(location.hash);
  if (!match) return {kind: "overview"};
  let id = match[2];
  try { id = decodeURIComponent(id); } catch (err) { /* keep it as typed */ }
  return {kind: match[1], id};
}

const PAGES = {block: blockPage, tx: txPage, address: addressPage};

/** Show the page of the current route; `quiet` re-renders in place (no "loading" flash, scroll kept). */
async function renderRoute({quiet = false} = {}) {
  const route = currentRoute();
  const overview = document.getElementById("overview");
  const view = document.getElementById("view");
  const token = ++state.renderToken;
  if (route.kind === "overview") {
    overview.hidden = false;
    view.hidden = true;
    view.replaceChildren();
    state.renderedTip = null;
    document.title = "zcoin explorer";
    return;
  }
  overview.hidden = true;
  view.hidden = false;
  if (!quiet) {
    fill(view, el("p", {class: "muted card"}, "loading…"));
    window.scrollTo(0, 0);
  }
  let page;
  try {
    page = await PAGES[route.kind](route.id);
  } catch (err) {
    if (quiet) return;  // keep what is shown; the next tip tries again
    page = notFound(route, err);
  }
  if (token !== state.renderToken) return;  // the user went elsewhere meanwhile
  state.renderedTip = state.tipHeight ?? -1;  // (unknown yet: the first known tip renders it again)
  fill(view, el("p", {class: "back"}, el("a", {href: "#/"}, "← overview")), page);
}

function notFound(route, err) {
  const what = {block: "block", tx: "transaction", address: "address"}[route.kind];
  const message = err instanceof ApiError && err.status === 404 ? `No ${what} ${route.id} is known.`
    : `Could not show the ${what} ${route.id}: ${err.message}`;
  return el("section", {class: "card"}, el("h2", {}, `${what[0].toUpperCase()}${what.slice(1)} not shown`),
            el("p", {class: "error"}, message));
}

/** A two-column table of facts. */
function facts(rows) {
  return el("dl", {class: "facts wide"}, rows.filter(Boolean).map(([key, value]) => [el("dt", {}, key),
    el("dd", {}, value)]));
}

async function tipHeightNow() {
  try { return Number(await getText("/api/blocks/tip/height")); } catch (err) { return state.tipHeight; }
}

async function blockPage(hash) {
  const block = await getJSON(api("block", hash));
  document.title = `block ${block.height} · zcoin explorer`;
  const next = block.in_best_chain ? await getText(api("block-height", block.height + 1)).catch(() => null) : null;
  const tree = (state.cluster && state.cluster.tree) || {blocks: [], tips: {}};
  const seen = tree.blocks.find((b) => b.hash === block.id);
  const tipOf = Object.entries(tree.tips || {}).filter(([, h]) => h === block.id).map(([name]) => name).sort();
  const txList = el("div", {class: "txs"});
  const section = el("section", {class: "card"},
    el("h2", {}, `Block ${block.height} `, block.in_best_chain
      ? el("span", {class: "pill state-up"}, "best chain")
      : el("span", {class: "pill state-down"}, "not in the best chain")),
    el("p", {class: "hash full", id: "block-hash"}, block.id),
    facts([
      ["height", block.height],
      ["confirmations", block.confirmations ?? "–"],
      ["time", [dateTime(block.timestamp), " (", ageSpan(block.timestamp), ")"]],
      ["previous block", block.previousblockhash ? blockLink(block.previousblockhash) : "none (genesis)"],
      next ? ["next block", blockLink(next.trim())] : null,
      ["transactions", block.tx_count],
      ["fees", amount(block.fees)],
      ["size", `${bytes(block.size)} · weight ${block.weight ?? "–"}`],
      seen && seen.first_seen_by ? ["first seen by", seen.first_seen_by] : null,
      tipOf.length ? ["tip of", tipOf.map(badge)] : null,
      ["difficulty", typeof block.difficulty === "number"
        ? block.difficulty.toLocaleString("en-US", {maximumSignificantDigits: 6}) : "–"],
      ["bits", typeof block.bits === "number" ? block.bits.toString(16).padStart(8, "0") : block.bits ?? "–"],
      ["nonce", block.nonce ?? "–"],
      ["version", block.version ?? "–"],
      ["merkle root", el("span", {class: "hash"}, block.merkle_root ?? "–")],
    ]),
    el("h3", {}, `Transactions (${block.tx_count})`),
    txList);
  await appendBlockTxs(block, txList, 0);
  return section;
}

/** The block's transactions, TXS_PAGE at a time, with a button for the next page. */
async function appendBlockTxs(block, container, start) {
  const txs = await getJSON(`${api("block", block.id, "txs")}${start ? `/${start}` : ""}`);
  container.querySelector(".more")?.remove();
  container.append(...txs.map((tx) => txSummary(tx)));
  if (start + txs.length < block.tx_count && txs.length) {
    const button = el("button", {class: "more", type: "button"},
                      `show ${Math.min(TXS_PAGE, block.tx_count - start - txs.length)} more`);
    button.addEventListener("click", () => {
      button.disabled = true;
      appendBlockTxs(block, container, start + txs.length).catch((err) => {
        button.replaceWith(el("p", {class: "error"}, err.message));
      });
    });
    container.append(button);
  }
}

function isCoinbase(tx) {
  return (tx.vin || []).some((i) => i.is_coinbase);
}

function txSummary(tx, address) {
  const out = (tx.vout || []).reduce((sum, o) => sum + (o.value || 0), 0);
  let net = null;
  if (address) {
    net = (tx.vout || []).filter((o) => o.scriptpubkey_address === address).reduce((s, o) => s + o.value, 0)
      - (tx.vin || []).filter((i) => i.prevout && i.prevout.scriptpubkey_address === address)
        .reduce((s, i) => s + i.prevout.value, 0);
  }
  const status = tx.status || {};
  return el("div", {class: "tx-row", dataset: {txid: tx.txid}},
    txLink(tx.txid),
    el("span", {class: "tx-meta"},
      isCoinbase(tx) ? el("span", {class: "pill coinbase"}, "coinbase") : null,
      `${plural((tx.vin || []).length, "input")} → ${plural((tx.vout || []).length, "output")}`,
      " · out ", amount(out),
      isCoinbase(tx) || typeof tx.fee !== "number" ? null : [" · fee ", amount(tx.fee)],
      address ? [" · ", status.confirmed ? `height ${status.block_height}` : "pending"] : null),
    net === null ? null : amount(net, net >= 0 ? "credit" : "debit"));
}

async function txPage(txid) {
  const tx = await getJSON(api("tx", txid));
  document.title = `tx ${shortHash(tx.txid)} · zcoin explorer`;
  const status = tx.status || {};
  const tip = status.confirmed ? await tipHeightNow() : null;
  const coinbase = isCoinbase(tx);
  const totalIn = (tx.vin || []).reduce((s, i) => s + (i.prevout ? i.prevout.value : 0), 0);
  const totalOut = (tx.vout || []).reduce((s, o) => s + o.value, 0);
  const vsize = tx.weight ? tx.weight / 4 : tx.size;
  const statusLine = status.confirmed
    ? ["in block ", blockLink(status.block_hash, `${status.block_height}`), " · ",
       plural(tip - status.block_height + 1, "confirmation"), " · ", dateTime(status.block_time)]
    : "in the mempool, not yet in a block";
  return el("section", {class: "card"},
    el("h2", {}, "Transaction ", status.confirmed ? el("span", {class: "pill state-up", id: "tx-status"}, "confirmed")
      : el("span", {class: "pill state-syncing", id: "tx-status"}, "unconfirmed")),
    el("p", {class: "hash full", id: "txid"}, tx.txid),
    facts([
      ["status", statusLine],
      ["fee", coinbase ? "none (coinbase)"
        : [amount(tx.fee), ` · ${Math.round(10 * tx.fee / vsize) / 10} base units per byte`]],
      ["size", `${bytes(tx.size)} · weight ${tx.weight ?? "–"}`],
      ["version", tx.version ?? "–"],
      ["locktime", tx.locktime ?? "–"],
    ]),
    el("div", {class: "io"},
      el("div", {},
        el("h3", {}, `Inputs (${(tx.vin || []).length})`, coinbase ? null : [" · ", amount(totalIn)]),
        el("table", {class: "io-table", id: "tx-inputs"}, el("tbody", {}, (tx.vin || []).map((input, i) =>
          el("tr", {},
            el("td", {class: "num muted"}, i),
            input.is_coinbase ? el("td", {colspan: 2}, "coinbase: newly minted coins")
              : [el("td", {}, input.prevout && input.prevout.scriptpubkey_address
                    ? addressLink(input.prevout.scriptpubkey_address) : "unknown coin",
                    el("div", {class: "small"}, "spends ",
                       txLink(input.txid, `${shortHash(input.txid)}:${input.vout}`))),
                 el("td", {class: "num"}, input.prevout ? amount(input.prevout.value) : "–")]))))),
      el("div", {class: "arrow"}, "→"),
      el("div", {},
        el("h3", {}, `Outputs (${(tx.vout || []).length}) · `, amount(totalOut)),
        el("table", {class: "io-table", id: "tx-outputs"}, el("tbody", {}, (tx.vout || []).map((output, i) =>
          el("tr", {},
            el("td", {class: "num muted"}, i),
            el("td", {}, output.scriptpubkey_address ? addressLink(output.scriptpubkey_address)
              : el("span", {class: "muted"}, output.scriptpubkey_type || "unknown")),
            el("td", {class: "num"}, amount(output.value)))))))));
}

async function addressPage(address) {
  const [info, utxos, txs] = await Promise.all([getJSON(api("address", address)),
    getJSON(api("address", address, "utxo")), getJSON(api("address", address, "txs"))]);
  document.title = `address ${shortHash(info.address)} · zcoin explorer`;
  const chain = info.chain_stats || {};
  const pool = info.mempool_stats || {};
  const confirmed = (chain.funded_txo_sum || 0) - (chain.spent_txo_sum || 0);
  const pending = (pool.funded_txo_sum || 0) - (pool.spent_txo_sum || 0);
  const balance = confirmed + pending;
  return el("section", {class: "card"},
    el("h2", {}, "Address"),
    el("p", {class: "hash full", id: "address"}, info.address),
    el("p", {class: "balance-line"}, "balance ",
      el("strong", {id: "balance", dataset: {value: String(balance)}, title: `${balance} base units`}, coins(balance)),
      " coins",
      pending ? el("span", {class: "muted"},
                   ` (confirmed ${coins(confirmed)}, pending ${pending > 0 ? "+" : ""}${coins(pending)})`) : null),
    facts([
      ["transactions", `${chain.tx_count || 0} confirmed, ${pool.tx_count || 0} pending`],
      ["received", amount((chain.funded_txo_sum || 0) + (pool.funded_txo_sum || 0))],
      ["sent", amount((chain.spent_txo_sum || 0) + (pool.spent_txo_sum || 0))],
    ]),
    el("h3", {}, `Unspent outputs (${utxos.length})`),
    utxos.length ? el("table", {class: "io-table", id: "utxos"}, el("tbody", {}, utxos.map((u) => el("tr", {},
      el("td", {}, txLink(u.txid, `${shortHash(u.txid)}:${u.vout}`)),
      el("td", {}, u.status && u.status.confirmed ? `height ${u.status.block_height}` : "pending"),
      el("td", {class: "num"}, amount(u.value)))))) : el("p", {class: "muted"}, "none"),
    el("h3", {}, `Transactions (${txs.length}${txs.length >= 50 ? ", the latest 50" : ""})`),
    el("div", {class: "txs"}, txs.length ? txs.map((tx) => txSummary(tx, info.address))
      : el("p", {class: "muted"}, "none")));
}

// ---- search -----------------------------------------------------------------------------------

/** Digits: a height; 64 hex digits: a block if the explorer knows one, else a transaction; else an address. */
async function search(query) {
  const q = query.trim();
  if (!q) return;
  if (/^\d+$/.test(q)) {
    try {
      const hash = (await getText(api("block-height", q))).trim();
      navigate(`#/block/${encodeURIComponent(hash)}`);
    } catch (err) {
      showSearchError(`No block at height ${q}${err.status === 404 ? "" : ` (${err.message})`}.`);
    }
  } else if (/^[0-9a-fA-F]{64}$/.test(q)) {
    const hex = q.toLowerCase();
    let kind = "tx";
    try { await getJSON(api("block", hex)); kind = "block"; } catch (err) { /* not a block: a transaction */ }
    navigate(`#/${kind}/${hex}`);
  } else {
    navigate(`#/address/${encodeURIComponent(q)}`);
  }
}

/** Go to a page; going to the page already shown renders it again. */
function navigate(hash) {
  if (location.hash === hash) renderRoute();
  else location.hash = hash;
}

function showSearchError(message) {
  document.getElementById("overview").hidden = true;
  const view = document.getElementById("view");
  view.hidden = false;
  fill(view, el("p", {class: "back"}, el("a", {href: "#/"}, "← overview")),
       el("section", {class: "card"}, el("h2", {}, "Nothing found"), el("p", {class: "error"}, message)));
}

// ---- start ------------------------------------------------------------------------------------

function start() {
  document.getElementById("search-form").addEventListener("submit", (event) => {
    event.preventDefault();
    const input = document.getElementById("search");
    search(input.value).then(() => input.blur());
  });
  window.addEventListener("hashchange", () => renderRoute());
  renderRoute();
  scheduleRefresh();
  connectEvents();
  setInterval(scheduleRefresh, PERIODIC_REFRESH_MS);
  setInterval(tickAges, 1000);
}

document.addEventListener("DOMContentLoaded", start);
