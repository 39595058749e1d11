'use strict';
// alloctrace's HTML report. Reads the report embedded as JSON and draws it.
// Names in the report come from files traced processes control: they enter
// the page only as text (append of strings, textContent, title), never as
// markup.
(function () {
  // Marks for measuring how long a big report takes to open.
  performance.mark('alloctrace-start');
  const DATA = JSON.parse(document.getElementById('alloctrace-data').textContent);
  performance.mark('alloctrace-parsed');
  // Frames are stored once (see compact.rs): put them back into the stacks.
  const STRINGS = Array.isArray(DATA.strings) ? DATA.strings : [];
  const text = (i) => (typeof i === 'number' && typeof STRINGS[i] === 'string' ? STRINGS[i] : null);
  const FRAMES = (Array.isArray(DATA.frames) ? DATA.frames : []).map((f) =>
    ({ function: text(f[0]), module: text(f[1]), file: text(f[2]), line: f[3], inlined: !!f[4] }));
  (function expand(v) {
    if (Array.isArray(v)) { v.forEach(expand); return; }
    if (!v || typeof v !== 'object') return;
    for (const [k, item] of Object.entries(v)) {
      if (k === 'frames' && Array.isArray(item) && item.every((i) => typeof i === 'number')) v.frames = item.map((i) => FRAMES[i] || {});
      else if (item && typeof item === 'object') expand(item);
    }
  })(DATA.report);
  performance.mark('alloctrace-expanded');
  const R = obj(DATA.report);
  document.getElementById('generator').textContent = String(DATA.generator || 'alloctrace');

  // ---- helpers ------------------------------------------------------------
  function obj(v) { return v && typeof v === 'object' && !Array.isArray(v) ? v : {}; }
  function arr(v) { return Array.isArray(v) ? v : []; }
  function h(tag, cls, ...kids) {
    const e = document.createElement(tag);
    if (cls) e.className = cls;
    for (const k of kids) if (k !== null && k !== undefined) e.append(k instanceof Node ? k : String(k));
    return e;
  }
  const SVG = 'http://www.w3.org/2000/svg';
  function s(tag, attrs) {
    const e = document.createElementNS(SVG, tag);
    for (const [k, v] of Object.entries(attrs || {})) e.setAttribute(k, String(v));
    return e;
  }
  const UNITS = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];
  function bytes(n) {
    n = Number(n) || 0;
    let v = Math.abs(n), i = 0;
    while (v >= 1024 && i < UNITS.length - 1) { v /= 1024; i++; }
    return (n < 0 ? '-' : '') + (i ? v.toFixed(1) : String(Math.round(v))) + ' ' + UNITS[i];
  }
  function rate(n) { return (n >= 0 ? '+' : '') + bytes(n) + '/s'; }
  function secs(t) {
    t = Number(t) || 0;
    if (t < 60) return t.toFixed(t < 10 ? 1 : 0) + ' s';
    if (t < 3600) return (t / 60).toFixed(1) + ' min';
    return (t / 3600).toFixed(1) + ' h';
  }
  function num(n) { return Number(n).toLocaleString('en-US', { maximumFractionDigits: 3 }); }
  function label(f) {
    f = obj(f);
    if (f.function !== null && f.function !== undefined) return String(f.function);
    if (f.module !== null && f.module !== undefined) return '[' + String(f.module) + ']';
    return '[unknown]';
  }
  function where(f) {
    f = obj(f);
    if (f.file === null || f.file === undefined) return '';
    const name = String(f.file).split('/').pop();
    return f.line !== null && f.line !== undefined ? name + ':' + f.line : name;
  }
  function leaf(stack) {
    const f = arr(obj(stack).frames)[0];
    return f ? label(f) : '[no stack]';
  }
  // A value formatted by what its key says it is.
  function fmt(key, v) {
    if (typeof v === 'boolean') return v ? 'yes' : 'no';
    if (typeof v !== 'number') return v === null || v === undefined ? '–' : String(v);
    if (key === 'pid') return String(v);
    if (/(_fraction|^retention)$/.test(key)) return (100 * v).toFixed(0) + '%';
    if (/_ratio$/.test(key)) return v.toFixed(2);
    if (/bytes_per_s$/.test(key)) return rate(v);
    if (/bytes/.test(key)) return bytes(v);
    if (/_per_s$/.test(key)) return num(v) + '/s';
    if (/(_s|_age)$/.test(key)) return secs(v);
    return num(v);
  }
  const NAMES = { r_squared: 'R²', at_s: 'At', threshold_s: 'Freed within', slope_bytes_per_s: 'Slope', window_s: 'Window', increasing_steps: 'Steps up',
    decreasing_steps: 'Steps down', oldest_age_s: 'Oldest block', growth_bytes_per_s: 'Growth' };
  function humanize(key) {
    if (Object.hasOwn(NAMES, key)) return NAMES[key];
    const t = String(key).replace(/_/g, ' ');
    return t.charAt(0).toUpperCase() + t.slice(1);
  }
  function hue(name, base, span) {
    let x = 0;
    for (let i = 0; i < name.length; i++) x = (x * 31 + name.charCodeAt(i)) >>> 0;
    return base + (x % span);
  }
  const PALETTE = ['#c0392b', '#2e86c1', '#d68910', '#7d3c98', '#17a589', '#566573'];

  // ---- the processes ------------------------------------------------------
  const processes = arr(R.processes).filter((p) => p && typeof p === 'object');
  const hostWide = R.tracked_processes !== undefined;
  const suspects = arr(R.suspects).filter((x) => x && typeof x === 'object');
  // Host-wide, live processes carry the growth the summaries rank them
  // by; processes that exited have none (their memory went with them).
  const live = (p) => typeof p.growth_bytes_per_s === 'number';
  const growthOf = (p) => (live(p) ? p.growth_bytes_per_s : 0);
  const outstanding = (p) => Number(obj(p.totals).outstanding_bytes) || 0;
  const ranked = processes.slice().sort((a, b) =>
    live(b) - live(a) || growthOf(b) - growthOf(a) || outstanding(b) - outstanding(a) || (a.pid || 0) - (b.pid || 0));
  const suspectsOf = (p) => suspects.filter((x) => x.pid === undefined || x.pid === p.pid);

  // ---- page ---------------------------------------------------------------
  const app = document.getElementById('app');
  const tip = h('div', 'tip');
  document.body.append(tip);

  function header() {
    const first = processes[0] || {};
    const title = hostWide
      ? 'alloctrace: ' + processes.length + ' processes, host-wide'
      : 'alloctrace: ' + (first.comm !== undefined ? String(first.comm) : '?') + ' (pid ' + first.pid + ')';
    document.title = title;
    const sub = [];
    if (!hostWide && first.exe) sub.push(String(first.exe));
    sub.push('traced for ' + secs(R.duration_s));
    if (R.min_age_s) sub.push('blocks younger than ' + secs(R.min_age_s) + ' left out of the stacks');
    if (R.sample_rate_bytes) sub.push('sampled every ' + bytes(R.sample_rate_bytes) + ' (numbers are estimates)');
    if (DATA.snapshots) sub.push('timeline with ' + DATA.snapshots + ' snapshots');
    app.append(h('h1', null, title), h('div', 'sub', sub.join(' · ')));
    const t = obj(R.totals);
    const cards = h('div', 'cards');
    const card = (value, what) => cards.append(h('div', 'card', h('b', null, value), h('span', null, what)));
    card(bytes(t.outstanding_bytes), 'outstanding');
    card(num(t.outstanding_count || 0), 'blocks outstanding');
    card(bytes(t.allocated_bytes), 'allocated in total');
    card(num(t.allocs || 0) + ' / ' + num(t.frees || 0), 'allocs / frees');
    card(num(t.lost_events || 0), 'events lost');
    if (hostWide) card(num(R.tracked_processes) + ' + ' + num(R.exited_processes || 0), 'processes live + exited');
    app.append(cards);
  }

  function verdict() {
    const box = h('section', 'verdict');
    if (hostWide) {
      const p = ranked[0];
      if (p) {
        box.append(h('h2', null, 'Fastest-growing process'),
          h('div', null, String(p.comm) + ' (pid ' + p.pid + '): ' + rate(growthOf(p)) + ', holding ' + bytes(outstanding(p))));
      } else box.append(h('h2', null, 'No process held memory'));
    } else if (suspects.length) {
      const x = suspects[0];
      const f = arr(x.frames)[0];
      box.append(h('h2', null, 'Most likely leak'),
        h('div', null, h('span', 'fn', leaf(x)), f && where(f) ? ' (' + where(f) + ')' : null,
          ': grows ' + rate(x.growth_bytes_per_s) + ', holds ' + bytes(x.bytes) + ' in ' + num(x.count || 0) +
          ' blocks, oldest ' + secs(x.oldest_age_s) + (suspects.length > 1 ? '; ' + (suspects.length - 1) + ' more suspects below' : '')));
      const why = x.why || x.reason || obj(x.evidence).why;
      if (why) box.append(h('div', 'why', String(why)));
    } else {
      box.classList.add('clean');
      box.append(h('h2', null, 'No leak suspect'),
        h('div', 'note', 'No stack grew steadily over the history kept (see the README on how suspects are judged).'));
    }
    app.append(box);
  }

  function processTable(show) {
    const sec = h('section', null, h('h2', null, 'Processes, fastest-growing first'));
    const table = h('table');
    table.append(h('tr', null, h('th', 'num', '#'), h('th', null, 'Process'), h('th', 'num', 'Growth'),
      h('th', 'num', 'Outstanding'), h('th', 'num', 'Blocks'), h('th', 'num', 'Allocs'), h('th', null, 'Executable')));
    const rows = [];
    ranked.forEach((p, i) => {
      const t = obj(p.totals);
      const tr = h('tr', 'pick', h('td', 'num', i + 1), h('td', 'fn', String(p.comm) + ' (' + p.pid + ')'),
        h('td', 'num', live(p) ? rate(growthOf(p)) : 'exited'), h('td', 'num', bytes(t.outstanding_bytes)),
        h('td', 'num', num(t.outstanding_count || 0)), h('td', 'num', num(t.allocs || 0)), h('td', 'loc', String(p.exe || '')));
      tr.dataset.pid = String(p.pid);
      tr.addEventListener('click', () => {
        rows.forEach((r) => r.classList.remove('selected'));
        tr.classList.add('selected');
        show(p);
      });
      rows.push(tr);
      table.append(tr);
    });
    sec.append(h('div', 'note', 'Click a process to see its memory over time and its stacks below.'), table);
    app.append(sec);
    return rows;
  }

  // ---- memory over time ---------------------------------------------------
  function chart(p) {
    const sec = h('section', 'chart', h('h2', null, 'Memory over time'));
    const t = obj(p.timeline);
    const ts = arr(t.elapsed_s);
    if (!ts.length) {
      sec.append(h('div', 'note', 'This report has no timeline (written before alloctrace recorded one); ' +
        '`alloctrace html REPORT.json --snapshots DIR` draws one from the run\'s snapshots.'));
      return sec;
    }
    const ps = suspectsOf(p);
    const series = [{ key: 'total', name: 'total outstanding', color: '#1d2330', xs: ts, ys: arr(t.outstanding_bytes), width: 2.5 }];
    arr(t.stacks).forEach((st, i) => {
      st = obj(st);
      const x = ps[st.suspect] || suspects[st.suspect];
      const name = 'suspect #' + (Number(st.suspect) + 1) + ': ' + (x ? leaf(x) : 'stack');
      series.push({ key: 'suspect-' + st.suspect, name, color: PALETTE[i % PALETTE.length], xs: arr(st.elapsed_s), ys: arr(st.bytes), width: 1.8 });
    });
    // The total on one chart (with the peak, when the report has one); the
    // suspects, far smaller, on their own scale.
    const peak = obj(R.peak);
    const marks = typeof peak.at_s === 'number' && (peak.pid === undefined || peak.pid === p.pid)
      ? [{ t: peak.at_s, bytes: peak.bytes, name: 'peak ' + bytes(peak.bytes) + ' at ' + secs(peak.at_s) }] : [];
    sec.append(lineChart(series.slice(0, 1), 220, marks));
    if (series.length > 1) {
      sec.append(h('div', 'note', 'The top suspects\' stacks, over the ticks the ranking judged them on:'));
      sec.append(lineChart(series.slice(1), 200));
    }
    return sec;
  }
  function lineChart(series, H, marks) {
    const W = 960, L = 74, Rm = 16, T = 12, B = 30;
    const box = h('div');
    let x0 = Infinity, x1 = -Infinity, y1 = 0;
    for (const se of series) {
      se.xs.forEach((x) => { x0 = Math.min(x0, x); x1 = Math.max(x1, x); });
      se.ys.forEach((y) => { y1 = Math.max(y1, Number(y) || 0); });
    }
    for (const m of marks || []) { x0 = Math.min(x0, m.t); x1 = Math.max(x1, m.t); y1 = Math.max(y1, Number(m.bytes) || 0); }
    if (!(x1 > x0)) { x0 = Math.min(x0, 0); x1 = x0 + 1; }
    y1 = niceMax(y1);
    const X = (x) => L + (x - x0) / (x1 - x0) * (W - L - Rm);
    const Y = (y) => T + (1 - (Number(y) || 0) / y1) * (H - T - B);
    const svg = s('svg', { viewBox: '0 0 ' + W + ' ' + H, class: 'chart-svg', role: 'img' });
    for (let i = 0; i <= 4; i++) {
      const v = y1 * i / 4, y = Y(v);
      svg.append(s('line', { x1: L, x2: W - Rm, y1: y, y2: y, class: 'grid' }));
      const tx = s('text', { x: L - 6, y: y + 4, 'text-anchor': 'end' });
      tx.textContent = bytes(v);
      svg.append(tx);
    }
    const span = x1 - x0, digits = span < 3 ? 2 : span < 30 ? 1 : 0;
    for (let i = 0; i <= 6; i++) {
      const v = x0 + span * i / 6;
      const tx = s('text', { x: X(v), y: H - 10, 'text-anchor': 'middle' });
      tx.textContent = span < 120 ? v.toFixed(digits) + ' s' : secs(v);
      svg.append(tx);
    }
    svg.append(s('line', { x1: L, x2: L, y1: T, y2: H - B, class: 'axis' }), s('line', { x1: L, x2: W - Rm, y1: H - B, y2: H - B, class: 'axis' }));
    const legend = h('div', 'legend');
    for (const se of series) {
      const n = Math.min(se.xs.length, se.ys.length);
      const pts = [];
      for (let i = 0; i < n; i++) pts.push(X(se.xs[i]).toFixed(1) + ',' + Y(se.ys[i]).toFixed(1));
      svg.append(s('polyline', { points: pts.join(' '), fill: 'none', stroke: se.color, 'stroke-width': se.width, 'data-series': se.key }));
      for (let i = 0; i < n; i++) {
        const c = s('circle', { cx: X(se.xs[i]).toFixed(1), cy: Y(se.ys[i]).toFixed(1), r: 4, fill: se.color, class: 'pt', 'data-series': se.key, 'data-t': se.xs[i], 'data-bytes': se.ys[i] });
        const title = s('title');
        title.textContent = se.name + ' at ' + secs(se.xs[i]) + ': ' + bytes(se.ys[i]) + ' (' + num(se.ys[i]) + ' bytes)';
        c.append(title);
        svg.append(c);
      }
      const sw = h('i');
      sw.style.background = se.color;
      legend.append(h('span', null, sw, se.name));
    }
    for (const m of marks || []) {
      const c = s('circle', { cx: X(m.t).toFixed(1), cy: Y(m.bytes).toFixed(1), r: 5, fill: 'none', stroke: '#c0392b', 'stroke-width': 2, class: 'peak', 'data-t': m.t, 'data-bytes': m.bytes });
      const title = s('title');
      title.textContent = m.name;
      c.append(title);
      svg.append(c);
      const sw = h('i', 'ring');
      legend.append(h('span', null, sw, m.name));
    }
    box.append(svg, legend);
    return box;
  }
  function niceMax(v) {
    if (v <= 0) return 1;
    const p = Math.pow(2, Math.ceil(Math.log2(v)));
    for (const f of [0.5, 0.625, 0.75, 0.875]) if (p * f >= v) return p * f;
    return p;
  }

  // ---- flamegraphs --------------------------------------------------------
  // Icicle layout: the outermost frame on top, callees below, each frame as
  // wide as the bytes under it. Only frames at least MIN_PX wide are drawn,
  // so 100k stacks stay a few thousand elements.
  const ROW = 18, MIN_PX = 1;
  function flamegraph(title, stacks, weight, baseHue, note) {
    const sec = h('section', null, h('h2', null, title));
    if (note) sec.append(h('div', 'note', note));
    const root = { name: 'all', v: 0, kids: new Map(), parent: null, depth: 0, where: '' };
    let depth = 0;
    for (const st of stacks) {
      const w = Number(obj(st)[weight]) || 0;
      if (w <= 0) continue;
      root.v += w;
      let node = root;
      const frames = arr(st.frames);
      for (let i = frames.length - 1; i >= 0; i--) {
        const name = label(frames[i]);
        let kid = node.kids.get(name);
        if (!kid) {
          kid = { name, v: 0, kids: new Map(), parent: node, depth: node.depth + 1, where: where(frames[i]) };
          node.kids.set(name, kid);
        }
        kid.v += w;
        node = kid;
      }
      depth = Math.max(depth, node.depth);
    }
    if (!root.v) {
      sec.append(h('div', 'note', 'Nothing to draw: no stack in this report has any ' + weight.replace(/_/g, ' ') + '.'));
      return sec;
    }
    const search = h('input');
    search.type = 'search';
    search.placeholder = 'Search functions';
    const reset = h('button', null, 'Reset zoom');
    const status = h('span', 'fg-status');
    const box = h('div', 'flame');
    box.dataset.total = String(root.v);
    sec.append(h('div', 'fg-bar', search, reset, status), box);
    let zoom = root, drawn = [];
    function color(node) { return 'hsl(' + hue(node.name, baseHue, 50) + ',75%,' + (68 + node.depth % 3 * 4) + '%)'; }
    function cell(node, x, w, dim) {
      const d = h('div', dim ? 'dim' : null);
      d.style.left = x + 'px';
      d.style.width = Math.max(w - 1, 0) + 'px';
      d.style.top = node.depth * ROW + 'px';
      d.style.background = color(node);
      if (w > 24) d.textContent = node.name;
      d.title = node.name + (node.where ? ' (' + node.where + ')' : '') + '\n' + bytes(node.v) + ', ' +
        (100 * node.v / root.v).toFixed(2) + '% of all';
      d.dataset.index = String(drawn.length);
      d.dataset.bytes = String(node.v);
      drawn.push({ node, el: d });
      return d;
    }
    function draw() {
      const W = box.clientWidth || 1000;
      const frag = document.createDocumentFragment();
      drawn = [];
      for (let a = zoom.parent; a; a = a.parent) frag.append(cell(a, 0, W, true));
      let maxDepth = zoom.depth;
      const todo = [[zoom, 0]];
      while (todo.length) {
        const [node, x] = todo.pop();
        const w = node.v / zoom.v * W;
        if (w < MIN_PX) continue;
        frag.append(cell(node, x, w, false));
        maxDepth = Math.max(maxDepth, node.depth);
        let cx = x;
        for (const kid of [...node.kids.values()].sort((p, q) => (p.name < q.name ? -1 : p.name > q.name ? 1 : 0))) {
          todo.push([kid, cx]);
          cx += kid.v / zoom.v * W;
        }
      }
      box.replaceChildren(frag);
      box.style.height = (maxDepth + 1) * ROW + 'px';
      highlight();
      // When the page was first fully drawn, in ms since navigation began.
      if (!document.body.dataset.drawnMs) {
        performance.mark('alloctrace-drawn');
        document.body.dataset.drawnMs = String(Math.round(performance.now()));
      }
    }
    function highlight() {
      const term = search.value.trim().toLowerCase();
      let matched = 0;
      if (term) {
        const todo = [zoom];
        while (todo.length) {
          const n = todo.pop();
          if (n.name.toLowerCase().includes(term)) matched += n.v;
          else todo.push(...n.kids.values());
        }
      }
      for (const { node, el } of drawn) el.classList.toggle('match', !!term && node.name.toLowerCase().includes(term));
      const where = zoom === root ? 'all stacks, ' + bytes(root.v) + '; click a frame to zoom' : 'zoomed into ' + zoom.name + ', ' + bytes(zoom.v);
      status.textContent = term ? 'matched ' + bytes(matched) + ' (' + (100 * matched / zoom.v).toFixed(1) + '% of ' + bytes(zoom.v) + ')' : where;
    }
    box.addEventListener('click', (e) => {
      const i = e.target && e.target.dataset ? e.target.dataset.index : undefined;
      if (i === undefined) return;
      zoom = drawn[Number(i)].node;
      draw();
    });
    reset.addEventListener('click', () => { zoom = root; search.value = ''; draw(); });
    search.addEventListener('input', highlight);
    let pending = 0;
    window.addEventListener('resize', () => { clearTimeout(pending); pending = setTimeout(draw, 100); });
    requestAnimationFrame(draw);
    sec.redraw = draw;
    return sec;
  }

  // ---- tables -------------------------------------------------------------
  function stackCell(stack) {
    const frames = arr(obj(stack).frames);
    const td = h('td', null, h('span', 'fn', leaf(stack)));
    if (frames[0] && where(frames[0])) td.append(' ', h('span', 'loc', where(frames[0])));
    const list = h('ul', 'stack hidden');
    for (const f of frames) list.append(h('li', null, label(f) + (where(f) ? '  ' + where(f) : '')));
    td.append(list);
    return [td, list];
  }
  function ageBar(ages) {
    ages = obj(ages);
    const keys = ['under_10s', 'under_1m', 'under_10m', 'older'];
    const names = ['< 10 s', '10 s – 1 min', '1 – 10 min', 'older'];
    const total = keys.reduce((a, k) => a + (Number(ages[k]) || 0), 0);
    const bar = h('div', 'ages');
    bar.title = keys.map((k, i) => names[i] + ': ' + bytes(ages[k])).join('\n');
    keys.forEach((k, i) => {
      const part = h('i', 'age' + i);
      part.style.width = (total ? 100 * (Number(ages[k]) || 0) / total : 0) + '%';
      bar.append(part);
    });
    return bar;
  }
  function evidenceGrid(ev) {
    const grid = h('div', 'evidence');
    for (const [k, v] of Object.entries(obj(ev))) {
      if (v !== null && typeof v === 'object') continue;
      grid.append(h('span', null, humanize(k)), h('span', null, fmt(k, v)));
    }
    return grid;
  }
  function suspectsTable(p) {
    const list = hostWide ? suspectsOf(p) : suspects;
    const sec = h('section', null, h('h2', null, 'Leak suspects'));
    if (!list.length) {
      sec.append(h('div', 'note', hostWide ? 'Suspects are ranked for single-process runs; host-wide, processes rank by growth.' : 'No stack grew steadily.'));
      return sec;
    }
    const known = new Set(['pid', 'growth_bytes_per_s', 'bytes', 'count', 'oldest_age_s', 'approximate', 'age_bytes', 'frames', 'evidence']);
    const table = h('table');
    table.append(h('tr', null, h('th', 'num', '#'), h('th', null, 'Stack (click for all frames)'), h('th', 'num', 'Outstanding'),
      h('th', 'num', 'Growth'), h('th', null, 'Evidence'), h('th', null, 'Age of bytes'), h('th', 'num', 'Oldest')));
    list.forEach((x, i) => {
      const [cell, frames] = stackCell(x);
      for (const [k, v] of Object.entries(x)) {
        if (known.has(k)) continue;
        if (v !== null && typeof v === 'object') cell.append(h('div', 'why', humanize(k) + ':'), evidenceGrid(v));
        else cell.append(h('div', 'why', (k === 'why' || k === 'reason' ? '' : humanize(k) + ': ') + fmt(k, v)));
      }
      const tr = h('tr', 'pick', h('td', 'num', i + 1), cell,
        h('td', 'num', bytes(x.bytes), h('div', 'loc', num(x.count || 0) + ' blocks')),
        h('td', 'num', rate(x.growth_bytes_per_s)), h('td', null, evidenceGrid(x.evidence)),
        h('td', null, ageBar(x.age_bytes)), h('td', 'num', secs(x.oldest_age_s)));
      tr.addEventListener('click', () => frames.classList.toggle('hidden'));
      table.append(tr);
    });
    sec.append(table);
    return sec;
  }
  // A table of stack records of any shape (peak holders, hot spots,
  // temporary allocations, ...): one column per scalar key.
  const MAX_ROWS = 50; // TABLE_ROWS in compact.rs
  function stackTable(rows) {
    const cols = [];
    for (const r of rows.slice(0, MAX_ROWS)) {
      for (const [k, v] of Object.entries(obj(r))) {
        if (k !== 'frames' && k !== 'pid' && (v === null || typeof v !== 'object') && !cols.includes(k)) cols.push(k);
        if (k === 'age_bytes' && !cols.includes(k)) cols.push(k);
      }
    }
    const table = h('table');
    table.append(h('tr', null, h('th', 'num', '#'), h('th', null, 'Stack'), ...cols.map((c) => h('th', 'num', humanize(c)))));
    rows.slice(0, MAX_ROWS).forEach((r, i) => {
      const [cell, frames] = stackCell(r);
      const tr = h('tr', 'pick', h('td', 'num', i + 1), cell,
        ...cols.map((c) => (c === 'age_bytes' ? h('td', null, ageBar(r[c])) : h('td', 'num', fmt(c, obj(r)[c])))));
      tr.addEventListener('click', () => frames.classList.toggle('hidden'));
      table.append(tr);
    });
    const frag = document.createDocumentFragment();
    frag.append(table);
    if (rows.length > MAX_ROWS) frag.append(h('div', 'note', (rows.length - MAX_ROWS) + ' more in the JSON report.'));
    return frag;
  }
  const isStackList = (v) => Array.isArray(v) && v.length > 0 && v.every((r) => r && typeof r === 'object' && Array.isArray(r.frames));
  // Sections for keys this page does not know by name.
  function extraSections(source, known, pid) {
    const out = [];
    // Scalars named after a list (`temporary_bytes` beside `temporary`)
    // are shown with it.
    const grouped = (k) => Object.keys(source).some((list) => k.startsWith(list + '_') && isStackList(source[list]));
    for (const [k, v] of Object.entries(source)) {
      if (known.has(k) || v === null || v === undefined || grouped(k)) continue;
      const sec = h('section', null, h('h2', null, Object.hasOwn(TITLES, k) ? TITLES[k] : humanize(k)));
      if (isStackList(v)) {
        const mine = v.filter((r) => pid === undefined || r.pid === undefined || r.pid === pid);
        if (!mine.length) continue;
        const scalars = {};
        for (const [k2, v2] of Object.entries(source)) if (k2.startsWith(k + '_') && typeof v2 !== 'object') scalars[k2.slice(k.length + 1)] = v2;
        if (Object.keys(scalars).length) sec.append(evidenceGrid(scalars));
        sec.append(stackTable(mine));
      } else if (typeof v === 'object' && !Array.isArray(v)) {
        sec.append(evidenceGrid(v));
        for (const [k2, v2] of Object.entries(v)) {
          if (isStackList(v2)) sec.append(h('h2', null, humanize(k2)), stackTable(v2));
          else if (v2 && typeof v2 === 'object' && !Array.isArray(v2)) sec.append(h('div', 'loc', humanize(k2)), evidenceGrid(v2));
        }
      } else if (!Array.isArray(v)) {
        sec.append(h('div', null, fmt(k, v)));
      } else continue;
      out.push(sec);
    }
    return out;
  }
  // Stacks with bytes allocated over the run, freed or not: the report's
  // hot spots when it has them.
  function allocatedStacks(p) {
    const lists = [];
    const look = (source) => {
      for (const [k, v] of Object.entries(source)) {
        if (isStackList(v)) lists.push([k, v]);
        else if (v && typeof v === 'object' && !Array.isArray(v)) for (const [k2, v2] of Object.entries(v)) if (isStackList(v2)) lists.push([k + '.' + k2, v2]);
      }
    };
    look(p);
    look(R);
    for (const [k, v] of lists) {
      const mine = v.filter((r) => r.pid === undefined || r.pid === p.pid);
      if (!mine.length) continue;
      if ('allocated_bytes' in mine[0]) return [mine, 'allocated_bytes', k];
      if (/hot/.test(k) && 'bytes' in mine[0]) return [mine, 'bytes', k];
    }
    return null;
  }

  const TITLES = { peak: 'Peak of outstanding memory, and the stacks that held it', hot_spots: 'Allocation hot spots (everything allocated, freed or not)',
    temporary: 'Temporary allocations (freed soon after allocation)' };
  const KNOWN_PROCESS = new Set(['pid', 'comm', 'exe', 'libc', 'totals', 'age_bytes', 'stacks', 'timeline', 'growth_bytes_per_s']);
  const KNOWN_REPORT = new Set(['version', 'duration_s', 'min_age_s', 'sample_rate_bytes', 'totals', 'processes', 'suspects',
    'tracked_processes', 'exited_processes', 'exited_processes_omitted']);

  function processDetail(p, into) {
    const parts = [];
    if (hostWide) parts.push(h('h2', null, String(p.comm) + ' (pid ' + p.pid + ')'));
    parts.push(chart(p), suspectsTable(p));
    parts.push(flamegraph('Outstanding bytes by stack', arr(p.stacks), 'bytes', 0,
      'What the process holds now, by call stack (outermost frame on top). Click a frame to zoom; search highlights matching functions.'));
    const alloc = allocatedStacks(p);
    if (alloc) {
      parts.push(flamegraph('Bytes allocated by stack (hot spots)', alloc[0], alloc[1], 190,
        'Everything each stack allocated over the run, freed or not (from `' + alloc[2] + '`).'));
    } else {
      parts.push(h('section', null, h('h2', null, 'Bytes allocated by stack (hot spots)'),
        h('div', 'note', 'This report has no per-stack allocation totals (written by an alloctrace without hot spots).')));
    }
    parts.push(...extraSections(p, KNOWN_PROCESS, p.pid));
    const ages = h('section', null, h('h2', null, 'Age of outstanding bytes'));
    const a = obj(p.age_bytes);
    const bar = ageBar(a);
    bar.classList.add('wide');
    ages.append(bar, h('div', 'note', '< 10 s: ' + bytes(a.under_10s) + ' · 10 s – 1 min: ' + bytes(a.under_1m) +
      ' · 1 – 10 min: ' + bytes(a.under_10m) + ' · older: ' + bytes(a.older)));
    parts.push(ages);
    into.replaceChildren(...parts);
  }

  header();
  verdict();
  const detail = h('div');
  if (hostWide) {
    const rows = processTable((p) => processDetail(p, detail));
    if (rows.length) rows[0].click();
  } else if (processes[0]) {
    processDetail(processes[0], detail);
  }
  app.append(detail);
  app.append(...extraSections(R, KNOWN_REPORT, undefined));
  performance.mark('alloctrace-rendered');
  document.body.dataset.rendered = 'true';
})();
