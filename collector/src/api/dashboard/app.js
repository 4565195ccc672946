// edgeloop dashboard: vanilla JS, no build step, no external resources.
//
// Views (hash routes): #/ fleet, #/agents/<id> machine, #/alerts, #/rules, #/audit.
// Data: the JSON API under /api/v1 (Bearer token kept in localStorage) and one EventSource on
// /api/v1/stream for live updates. The one rule: nothing stale is ever shown as live. An agent row
// is "offline" when the collector says so, "stale" when the collector says so or when the page's
// own feed has gone quiet (then nothing on screen can be trusted to be current).
'use strict';

(function () {
  const ROW_H = 30; // must match --row in app.css
  const OVERSCAN = 8;
  const FEED_STALE_MS = 7000; // `agents` arrives every 2 s; three missed means the feed is stale
  const WINDOW_MS = 15 * 60 * 1000;
  const MAX_CHART_POINTS = 5000;
  const ROLES = ['viewer', 'maintenance', 'engineer', 'operator', 'admin'];

  // Measurements for tests and the benchmark.
  const probe = (window.__edgeloop = {
    firstRenderMs: null,
    agentsEvents: 0,
    agentsApplyMs: 0,
    readings: 0,
    alertsEvents: 0,
    renders: 0,
    renderMs: 0,
    // For the benchmark: apply a whole agents list as an `agents` event would.
    applyAgents: (list) => applyAgents(list),
    agentsList: () => [...state.agents.values()],
    frames: null,
    startFrameProbe() {
      const frames = (probe.frames = []);
      let last = performance.now();
      const step = (t) => {
        if (probe.frames !== frames) return;
        frames.push(t - last);
        last = t;
        requestAnimationFrame(step);
      };
      requestAnimationFrame(step);
    },
    stopFrameProbe() {
      const f = probe.frames || [];
      probe.frames = null;
      const sorted = f.slice().sort((a, b) => a - b);
      const pct = (p) => (sorted.length ? sorted[Math.min(sorted.length - 1, Math.floor(p * sorted.length))] : 0);
      return { frames: f.length, median: pct(0.5), p95: pct(0.95), max: sorted.length ? sorted[sorted.length - 1] : 0 };
    },
  });

  const $ = (sel, root) => (root || document).querySelector(sel);
  const view = $('#view');

  function el(tag, attrs, ...children) {
    const e = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (v === null || v === undefined || v === false) continue;
      if (k === 'class') e.className = v;
      else if (k === 'text') e.textContent = v;
      else if (k.startsWith('on')) e.addEventListener(k.slice(2), v);
      else e.setAttribute(k, v === true ? '' : v);
    }
    for (const c of children.flat()) {
      if (c === null || c === undefined || c === false) continue;
      e.append(c instanceof Node ? c : document.createTextNode(String(c)));
    }
    return e;
  }

  // ---- state ---------------------------------------------------------------------------------
  const state = {
    token: localStorage.getItem('edgeloop.token') || '',
    me: null,
    agents: new Map(), // id → AgentSummary
    order: [], // sorted ids
    alerts: [], // AlertView[]
    lastFeedAt: 0, // when the last `agents` update (event or fetch) arrived, ms
    route: null,
    cleanup: [], // what the current view must undo when it is left
    onAgents: null, // current view's hooks
    onAlerts: null,
    onReading: null,
  };
  let source = null;
  let sourceAgent = undefined;

  function roleAtLeast(role) {
    return state.me && ROLES.indexOf(state.me.role) >= ROLES.indexOf(role);
  }

  // ---- messages ------------------------------------------------------------------------------
  let noticeTimer = 0;
  function showError(msg) {
    const e = $('#error');
    e.textContent = msg;
    e.hidden = false;
  }
  function clearMessages() {
    $('#error').hidden = true;
    $('#error').textContent = '';
    $('#notice').hidden = true;
  }
  function showNotice(msg) {
    const n = $('#notice');
    n.textContent = msg;
    n.hidden = false;
    clearTimeout(noticeTimer);
    noticeTimer = setTimeout(() => (n.hidden = true), 8000);
  }

  // ---- API -----------------------------------------------------------------------------------
  class ApiError extends Error {
    constructor(status, message, body) {
      super(message);
      this.status = status;
      this.body = body;
    }
  }

  async function api(method, path, body) {
    const opts = { method, headers: { Authorization: 'Bearer ' + state.token } };
    if (body !== undefined) {
      opts.headers['Content-Type'] = 'application/json';
      opts.body = JSON.stringify(body);
    }
    let resp;
    try {
      resp = await fetch('/api/v1' + path, opts);
    } catch (e) {
      throw new ApiError(0, 'the collector cannot be reached (' + e.message + ')');
    }
    const text = await resp.text();
    let json = null;
    try {
      json = text ? JSON.parse(text) : null;
    } catch (_) {
      json = null;
    }
    if (resp.status === 401) {
      logout('Your token was not accepted: ' + ((json && json.error) || 'missing or unknown token'));
      throw new ApiError(401, (json && json.error) || 'missing or unknown token', json);
    }
    if (!resp.ok) {
      const msg = (json && json.error) || text || resp.statusText;
      throw new ApiError(resp.status, `${method} ${path}: ${resp.status} ${msg}`, json);
    }
    return json;
  }

  // ---- formatting ----------------------------------------------------------------------------
  const nsToMs = (ns) => (ns === null || ns === undefined ? null : Number(ns) / 1e6);
  function ago(ns) {
    if (!ns) return 'never';
    const s = Math.max(0, Math.round((Date.now() - nsToMs(ns)) / 1000));
    if (s < 60) return s + ' s ago';
    if (s < 3600) return Math.floor(s / 60) + ' min ago';
    if (s < 86400) return Math.floor(s / 3600) + ' h ago';
    return Math.floor(s / 86400) + ' d ago';
  }
  function hours(ms) {
    const h = ms / 3600000;
    if (h < 1) return Math.max(1, Math.round(ms / 60000)) + ' min';
    if (h < 10) return h.toFixed(1).replace(/\.0$/, '') + ' h';
    return Math.round(h) + ' h';
  }
  const fmtTime = (ns) => (ns ? new Date(nsToMs(ns)).toLocaleString() : '');
  const fmtNum = (n) => (n === null || n === undefined ? '–' : Number(n).toLocaleString('en-US'));
  function fmtValue(v) {
    if (v === null || v === undefined) return '–';
    const a = Math.abs(v);
    return a >= 1000 || a === 0 ? v.toFixed(0) : a >= 10 ? v.toFixed(1) : a >= 1 ? v.toFixed(2) : v.toFixed(3);
  }

  // The state the page shows for an agent: never "online" unless the collector says online, not
  // stale, and the feed that told us so is itself current.
  function agentState(a) {
    if (!a.online) return 'offline';
    if (a.stale || feedStale()) return 'stale';
    return 'online';
  }
  const feedStale = () => state.lastFeedAt > 0 && Date.now() - state.lastFeedAt > FEED_STALE_MS;

  // ---- login ---------------------------------------------------------------------------------
  function showLogin(msg) {
    closeSource();
    leaveView();
    view.replaceChildren();
    $('#login').hidden = false;
    for (const id of ['#nav', '#who', '#logout', '#feed']) $(id).hidden = true;
    const le = $('#login-error');
    le.hidden = !msg;
    le.textContent = msg || '';
    $('#token').focus();
  }

  function logout(msg) {
    localStorage.removeItem('edgeloop.token');
    state.token = '';
    state.me = null;
    showLogin(msg);
  }

  async function login() {
    if (!state.token) return showLogin();
    try {
      state.me = await api('GET', '/me');
    } catch (e) {
      if (e.status !== 401) showLogin(e.message);
      return;
    }
    $('#login').hidden = true;
    $('#nav').hidden = false;
    const who = $('#who');
    who.hidden = false;
    who.textContent = `${state.me.name} · ${state.me.role}`;
    $('#logout').hidden = false;
    $('#feed').hidden = false;
    await loadAgents();
    loadAlerts();
    route();
  }

  $('#login-form').addEventListener('submit', (ev) => {
    ev.preventDefault();
    state.token = $('#token').value.trim();
    localStorage.setItem('edgeloop.token', state.token);
    $('#token').value = '';
    login();
  });
  $('#logout').addEventListener('click', () => logout());

  // ---- shared data ---------------------------------------------------------------------------
  async function loadAgents() {
    try {
      applyAgents(await api('GET', '/agents'));
    } catch (e) {
      if (e.status !== 401) showError(e.message);
    }
  }

  async function loadAlerts() {
    try {
      applyAlerts(await api('GET', '/alerts'));
    } catch (e) {
      if (e.status !== 401) showError(e.message);
    }
  }

  function applyAgents(list) {
    const t0 = performance.now();
    let changedSet = list.length !== state.agents.size;
    const seen = new Set();
    for (const a of list) {
      if (!state.agents.has(a.agent)) changedSet = true;
      state.agents.set(a.agent, a);
      seen.add(a.agent);
    }
    if (changedSet) {
      for (const id of [...state.agents.keys()]) if (!seen.has(id)) state.agents.delete(id);
      state.order = [...state.agents.keys()].sort();
    }
    state.lastFeedAt = Date.now();
    if (state.onAgents) state.onAgents(changedSet);
    probe.agentsApplyMs += performance.now() - t0;
  }

  function applyAlerts(list) {
    state.alerts = list || [];
    if (state.onAlerts) state.onAlerts();
  }

  // ---- the live feed (one EventSource, scoped to an agent on its machine page) ---------------
  let pendingAgents = null;
  let agentsFrame = 0;
  let meCheck = 0;

  function openSource(agent) {
    if (source && sourceAgent === agent) return;
    closeSource();
    sourceAgent = agent;
    let url = '/api/v1/stream?token=' + encodeURIComponent(state.token);
    // The fleet overview draws no readings: do not have them sent.
    url += agent ? '&agent=' + encodeURIComponent(agent) : '&readings=false';
    const es = (source = new EventSource(url));
    setFeed('connecting');
    es.onopen = () => setFeed('live');
    es.onerror = () => {
      setFeed('reconnecting');
      // EventSource hides the status: ask /me whether the token is still good (401 → login).
      clearTimeout(meCheck);
      meCheck = setTimeout(() => api('GET', '/me').catch(() => {}), 1000);
    };
    es.addEventListener('agents', (ev) => {
      probe.agentsEvents++;
      // Batch to one apply per frame: under load only the newest list matters.
      pendingAgents = ev.data;
      if (!agentsFrame) {
        agentsFrame = requestAnimationFrame(() => {
          agentsFrame = 0;
          const data = pendingAgents;
          pendingAgents = null;
          try {
            applyAgents(JSON.parse(data));
          } catch (e) {
            console.error('bad agents event', e);
          }
          setFeed('live');
        });
      }
    });
    es.addEventListener('alerts', (ev) => {
      probe.alertsEvents++;
      try {
        applyAlerts(JSON.parse(ev.data));
      } catch (e) {
        console.error('bad alerts event', e);
      }
    });
    es.addEventListener('reading', (ev) => {
      probe.readings++;
      if (!state.onReading) return;
      try {
        state.onReading(JSON.parse(ev.data));
      } catch (e) {
        console.error('bad reading event', e);
      }
    });
  }

  function closeSource() {
    if (source) source.close();
    source = null;
    sourceAgent = undefined;
    if (agentsFrame) cancelAnimationFrame(agentsFrame);
    agentsFrame = 0;
  }

  function setFeed(s) {
    const f = $('#feed');
    if (s === 'live' && feedStale()) s = 'stale';
    f.dataset.state = s;
    f.textContent = { live: 'live', connecting: 'connecting…', reconnecting: 'feed lost, reconnecting…', stale: 'feed stale' }[s] || s;
  }

  // Once a second: relative times tick, and a quiet feed is called out.
  setInterval(() => {
    if (!state.me) return;
    const banner = $('#banner');
    if (feedStale()) {
      const s = Math.round((Date.now() - state.lastFeedAt) / 1000);
      banner.textContent = `No update from the collector for ${s} s: every value below may be out of date and is marked stale.`;
      banner.hidden = false;
      if ($('#feed').dataset.state === 'live') setFeed('stale');
    } else {
      banner.hidden = true;
    }
    if (state.tick) state.tick();
  }, 1000);

  // ---- routing -------------------------------------------------------------------------------
  function leaveView() {
    for (const f of state.cleanup) f();
    state.cleanup = [];
    state.onAgents = state.onAlerts = state.onReading = state.tick = null;
  }

  function route() {
    if (!state.me) return;
    const hash = location.hash || '#/';
    const parts = hash.slice(2).split('/').map(decodeURIComponent);
    leaveView();
    clearMessages();
    view.replaceChildren();
    let name = parts[0] || 'fleet';
    for (const a of document.querySelectorAll('#nav a')) a.classList.toggle('active', a.dataset.route === name);
    if (name === 'agents' && parts[1]) {
      openSource(parts[1]);
      machineView(parts[1]);
      return;
    }
    openSource(null);
    if (name === 'alerts') alertsView();
    else if (name === 'rules') rulesView(parts[1]);
    else if (name === 'audit') auditView();
    else fleetView();
  }
  window.addEventListener('hashchange', route);

  // ---- fleet overview (virtualised) ----------------------------------------------------------
  function fleetView() {
    const filter = el('input', { type: 'search', placeholder: 'filter: agent, site, offline, stale…', 'data-testid': 'filter', 'aria-label': 'filter agents' });
    const summary = el('span', { class: 'summary', 'data-testid': 'fleet-summary' });
    const head = el(
      'div',
      { class: 'fleet-head', role: 'row' },
      ['Agent', 'Site', 'State', 'Last seen', 'Backlog', 'Dropped', 'Trips (latched)', 'Alerts', 'Sensors', 'Version'].map((h) =>
        el('span', { role: 'columnheader', class: /Backlog|Dropped|Alerts/.test(h) ? 'num' : '' }, h),
      ),
    );
    const spacer = el('div', { class: 'fleet-spacer' });
    // The header sits in the scroll box (sticky), so its columns line up with the rows'.
    const scroll = el('div', { class: 'fleet-scroll', role: 'table', 'data-testid': 'fleet-list' }, head, spacer);
    view.append(el('h1', {}, 'Fleet'), el('div', { class: 'toolbar' }, filter, summary), scroll);

    let filtered = [];
    const pool = []; // row objects: { el, cells, id, cache }
    let frame = 0;

    function refilter() {
      const q = filter.value.trim().toLowerCase();
      if (!q) filtered = state.order;
      else
        filtered = state.order.filter((id) => {
          const a = state.agents.get(id);
          const st = agentState(a);
          if (q === 'offline' || q === 'stale' || q === 'online') return st === q;
          return id.toLowerCase().includes(q) || (a.site || '').toLowerCase().includes(q);
        });
      spacer.style.height = filtered.length * ROW_H + 'px';
    }

    function makeRow() {
      const cells = {};
      const names = ['agent', 'site', 'state', 'seen', 'backlog', 'dropped', 'latched', 'alerts', 'sensors', 'version'];
      const r = el('div', { class: 'fleet-row', role: 'row' });
      for (const n of names) {
        const c = el('span', { class: n + (['backlog', 'dropped', 'alerts'].includes(n) ? ' num' : ''), role: 'cell' });
        if (n === 'agent') {
          cells.link = el('a', {});
          c.append(cells.link);
        }
        if (n === 'state') {
          cells.badge = el('span', { class: 'badge' });
          c.append(cells.badge);
        }
        cells[n] = c;
        r.append(c);
      }
      scroll.append(r);
      return { el: r, cells, id: null, cache: {} };
    }

    function set(row, key, node, value, prop) {
      if (row.cache[key] === value) return;
      row.cache[key] = value;
      node[prop || 'textContent'] = value;
    }

    function fillRow(row, a, index) {
      const st = agentState(a);
      if (row.id !== a.agent) {
        row.id = a.agent;
        row.cache = {};
        row.el.dataset.testid = 'agent-row-' + a.agent;
        row.cells.link.href = '#/agents/' + encodeURIComponent(a.agent);
        row.cells.link.textContent = a.agent;
        row.cells.link.dataset.testid = 'agent-link-' + a.agent;
      }
      set(row, 'top', row.el.style, `translateY(${(index + 1) * ROW_H}px)`, 'transform');
      if (row.cache.state !== st) {
        row.cache.state = st;
        row.el.dataset.state = st;
        row.el.className = 'fleet-row ' + st;
        row.cells.badge.className = 'badge ' + st;
        row.cells.badge.textContent = st.toUpperCase();
      }
      set(row, 'site', row.cells.site, a.site || '–');
      set(row, 'seen', row.cells.seen, ago(a.last_seen_ns));
      set(row, 'backlog', row.cells.backlog, fmtNum(a.backlog_readings));
      set(row, 'dropped', row.cells.dropped, fmtNum(a.dropped_total));
      const latched = a.latched || [];
      set(row, 'latched', row.cells.latched, latched.length ? `${latched.length}: ${latched.join(', ')}` : '–');
      set(row, 'latchedHot', row.cells.latched, latched.length ? 'latched hot' : 'latched', 'className');
      set(row, 'alerts', row.cells.alerts, String(a.firing_alerts || 0));
      set(row, 'alertsHot', row.cells.alerts, a.firing_alerts ? 'alerts num hot' : 'alerts num', 'className');
      const ns = (a.sensors || []).length;
      const stale = (a.stale_sensors || []).length;
      set(row, 'sensors', row.cells.sensors, stale ? `${ns} (${stale} STALE)` : String(ns));
      set(row, 'sensorsHot', row.cells.sensors, stale ? 'sensors hot' : 'sensors', 'className');
      set(row, 'version', row.cells.version, a.version || '–');
    }

    function render() {
      frame = 0;
      const t0 = performance.now();
      const top = Math.max(0, scroll.scrollTop - ROW_H);
      const height = scroll.clientHeight || 600;
      const first = Math.max(0, Math.floor(top / ROW_H) - OVERSCAN);
      const last = Math.min(filtered.length, Math.ceil((top + height) / ROW_H) + OVERSCAN);
      const needed = last - first;
      while (pool.length < needed) pool.push(makeRow());
      // Keep a row on the agent it showed when still visible (fewer DOM writes while scrolling).
      const want = new Map();
      for (let i = first; i < last; i++) want.set(filtered[i], i);
      const free = [];
      for (const row of pool) {
        if (row.id !== null && want.has(row.id)) {
          const i = want.get(row.id);
          want.delete(row.id);
          fillRow(row, state.agents.get(row.id), i);
          row.el.hidden = false;
        } else free.push(row);
      }
      for (const [id, i] of want) {
        const row = free.pop();
        fillRow(row, state.agents.get(id), i);
        row.el.hidden = false;
      }
      for (const row of free) {
        row.el.hidden = true;
        row.id = null;
        row.el.removeAttribute('data-testid');
      }
      let online = 0, offline = 0, stale = 0, firing = 0;
      for (const id of state.order) {
        const a = state.agents.get(id);
        const st = agentState(a);
        if (st === 'online') online++;
        else if (st === 'offline') offline++;
        else stale++;
        firing += a.firing_alerts || 0;
      }
      summary.replaceChildren(
        el('b', {}, fmtNum(state.order.length)), ' agents · ',
        el('b', {}, fmtNum(online)), ' online · ',
        el('b', {}, fmtNum(offline)), ' offline · ',
        el('b', {}, fmtNum(stale)), ' stale · ',
        el('b', {}, fmtNum(firing)), ' firing alerts',
        filtered.length !== state.order.length ? ` · showing ${fmtNum(filtered.length)}` : '',
      );
      probe.renders++;
      probe.renderMs += performance.now() - t0;
      if (probe.firstRenderMs === null && needed > 0) {
        // Rows are in the DOM; the next frame has painted them.
        requestAnimationFrame(() => {
          if (probe.firstRenderMs === null) probe.firstRenderMs = performance.now();
        });
      }
    }

    const schedule = () => {
      if (!frame) frame = requestAnimationFrame(render);
    };
    state.onAgents = (setChanged) => {
      if (setChanged || filter.value) refilter();
      schedule();
    };
    state.tick = schedule;
    filter.addEventListener('input', () => {
      refilter();
      scroll.scrollTop = 0;
      schedule();
    });
    scroll.addEventListener('scroll', schedule, { passive: true });
    window.addEventListener('resize', schedule);
    state.cleanup.push(() => {
      window.removeEventListener('resize', schedule);
      if (frame) cancelAnimationFrame(frame);
    });
    refilter();
    render();
  }

  // ---- machine page --------------------------------------------------------------------------
  function machineView(agent) {
    const headState = el('span', { class: 'badge', 'data-testid': 'agent-state' });
    const facts = el('div', { class: 'facts' });
    const head = el('div', { class: 'machine-head', 'data-testid': 'machine-head' }, el('h1', {}, agent), headState, facts);
    const reason = el('input', { type: 'text', placeholder: 'reason (recorded in the audit log)', 'data-testid': 'shutdown-reason', size: 36 });
    const confirm = el(
      'div',
      { class: 'confirm', hidden: true, 'data-testid': 'shutdown-confirm-box' },
      el('strong', {}, `Shut down ${agent}?`),
      reason,
      el('button', { type: 'button', class: 'danger', 'data-testid': 'shutdown-confirm', onclick: () => doShutdown() }, 'Confirm shut down'),
      el('button', { type: 'button', 'data-testid': 'shutdown-cancel', onclick: () => (confirm.hidden = true) }, 'Cancel'),
    );
    const shutdownBtn = el('button', { type: 'button', class: 'danger', 'data-testid': 'shutdown', onclick: () => { confirm.hidden = false; reason.focus(); } }, 'Shut down');
    const latchedBox = el('span', { class: 'latched', 'data-testid': 'latched' });
    const alertsBox = el('div', { 'data-testid': 'agent-alerts' });
    const charts = el('div', { class: 'charts' });
    view.append(
      el('p', {}, el('a', { href: '#/' }, '← Fleet')),
      head,
      el('div', { class: 'actions' }, shutdownBtn, latchedBox),
      confirm,
      el('h2', {}, 'Firing alerts'),
      alertsBox,
      el('h2', {}, 'Sensors (last 15 min)'),
      charts,
    );

    const series = new Map(); // sensor → chart
    let events = [];
    let alive = true;
    state.cleanup.push(() => (alive = false));

    async function doShutdown() {
      clearMessages();
      try {
        const r = await api('POST', `/agents/${encodeURIComponent(agent)}/commands`, { action: 'shutdown', reason: reason.value || 'from the dashboard' });
        confirm.hidden = true;
        showNotice(`Shutdown sent to ${agent} (command ${r && r.command_id}).`);
      } catch (e) {
        confirm.hidden = true;
        if (e.status !== 401) showError(e.status === 403 ? `Refused by the collector (403): ${(e.body && e.body.error) || e.message}` : e.message);
      }
    }

    async function resetLatch(rule) {
      clearMessages();
      try {
        const r = await api('POST', `/agents/${encodeURIComponent(agent)}/commands`, { action: 'reset_latch', rule });
        showNotice(`Reset of ${rule} sent (command ${r && r.command_id}).`);
      } catch (e) {
        if (e.status !== 401) showError(e.status === 403 ? `Refused by the collector (403): ${(e.body && e.body.error) || e.message}` : e.message);
      }
    }

    function renderHead() {
      const a = state.agents.get(agent);
      if (!a) {
        headState.className = 'badge offline';
        headState.textContent = 'UNKNOWN';
        head.dataset.state = 'offline';
        return;
      }
      const st = agentState(a);
      headState.className = 'badge ' + st;
      headState.textContent = st.toUpperCase();
      head.className = 'machine-head ' + st;
      head.dataset.state = st;
      facts.replaceChildren(
        el('span', {}, 'last seen ', el('b', { 'data-testid': 'last-seen' }, ago(a.last_seen_ns))),
        el('span', {}, 'site ', el('b', {}, a.site || '–')),
        el('span', {}, 'backlog ', el('b', {}, fmtNum(a.backlog_readings))),
        el('span', {}, 'dropped ', el('b', {}, fmtNum(a.dropped_total))),
        el('span', {}, 'stored ', el('b', {}, fmtNum(a.points_stored))),
        el('span', {}, 'version ', el('b', {}, a.version || '–')),
      );
      const latched = a.latched || [];
      const key = latched.join('\u0000');
      if (latchedBox.dataset.key !== key) {
        latchedBox.dataset.key = key;
        latchedBox.replaceChildren(
          ...latched.map((rule) =>
            el('span', {}, el('span', { class: 'badge firing' }, 'TRIPPED'), ' ', rule, ' ',
              el('button', { type: 'button', 'data-testid': 'reset-latch-' + rule, onclick: () => resetLatch(rule) }, 'Reset latch'), ' '),
          ),
        );
      }
      for (const s of a.sensors || []) ensureChart(s);
      for (const [name, c] of series) c.setStale(st !== 'online' || (a.stale_sensors || []).includes(name));
    }

    function renderAlerts() {
      const mine = state.alerts.filter((v) => v.alert.labels && v.alert.labels.agent === agent && v.alert.state !== 'resolved');
      if (!mine.length) {
        alertsBox.replaceChildren(el('p', { class: 'muted' }, 'None.'));
      } else {
        alertsBox.replaceChildren(
          el('table', { class: 'list' },
            el('tr', {}, ['State', 'Severity', 'Summary', 'Since', 'Acked by'].map((h) => el('th', {}, h))),
            mine.map((v) => el('tr', { 'data-testid': 'alert-' + v.alert.fingerprint, 'data-state': v.alert.state },
              el('td', {}, el('span', { class: 'badge ' + v.alert.state }, v.alert.state.toUpperCase())),
              el('td', {}, el('span', { class: 'badge ' + v.alert.severity }, v.alert.severity)),
              el('td', {}, v.alert.summary),
              el('td', {}, ago(v.alert.started_ns)),
              el('td', {}, v.alert.acked_by || '–'),
            )),
          ),
        );
      }
      for (const c of series.values()) c.setPredictions(mine.filter((v) => v.alert.prediction && v.alert.labels.sensor === c.sensor));
    }

    function ensureChart(sensor) {
      if (series.has(sensor)) return series.get(sensor);
      const c = new Chart(sensor);
      series.set(sensor, c);
      const sorted = [...series.keys()].sort();
      const idx = sorted.indexOf(sensor);
      const before = series.get(sorted[idx + 1]);
      charts.insertBefore(c.root, before ? before.root : null);
      c.events = events;
      const since = (Date.now() - WINDOW_MS) * 1e6;
      api('GET', `/agents/${encodeURIComponent(agent)}/series?sensor=${encodeURIComponent(sensor)}&since_ns=${since}&max_points=600`)
        .then((r) => alive && c.load(r.points || []))
        .catch((e) => alive && e.status !== 401 && showError(e.message));
      return c;
    }

    async function loadDetail() {
      try {
        const d = await api('GET', `/agents/${encodeURIComponent(agent)}`);
        if (!alive) return;
        if (!state.agents.has(agent)) {
          state.agents.set(agent, d);
          state.order = [...state.agents.keys()].sort();
        }
        for (const l of d.latest || []) {
          const c = ensureChart(l.sensor);
          c.latest = { ts: nsToMs(l.ts_ns), value: l.value };
          if (l.stale) c.setStale(true);
        }
        renderHead();
      } catch (e) {
        if (e.status !== 401) showError(e.message);
      }
    }

    async function loadEvents() {
      try {
        const list = await api('GET', `/events?agent=${encodeURIComponent(agent)}&limit=200`);
        if (!alive) return;
        events = (list || []).map((e) => ({ t: nsToMs(e.ts_ns), kind: e.kind, severity: e.severity, subject: e.subject, message: e.message }));
        for (const c of series.values()) {
          c.events = events;
          c.dirty();
        }
      } catch (e) {
        if (e.status !== 401) showError(e.message);
      }
    }

    state.onAgents = () => renderHead();
    state.onAlerts = () => renderAlerts();
    state.onReading = (r) => {
      if (r.agent !== agent) return;
      ensureChart(r.sensor).append(nsToMs(r.ts_ns), r.value);
    };
    state.tick = () => {
      renderHead();
      for (const c of series.values()) c.dirty();
    };
    const evTimer = setInterval(loadEvents, 5000);
    state.cleanup.push(() => clearInterval(evTimer));
    renderHead();
    renderAlerts();
    loadDetail();
    loadEvents();
  }

  // A live line chart on a canvas: 15 minutes of data on a linear time axis; a prediction extends
  // the axis on the right (its own compressed scale, marked "forecast") with the limit line and
  // the band from the earliest to the latest plausible time.
  class Chart {
    constructor(sensor) {
      this.sensor = sensor;
      this.points = []; // [tMs, value], ascending
      this.events = [];
      this.predictions = [];
      this.stale = false;
      this.latest = null;
      this.frame = 0;
      this.canvas = el('canvas', { 'aria-label': 'chart of ' + sensor, role: 'img' });
      this.valueEl = el('span', { class: 'value', 'data-testid': 'value-' + sensor }, '–');
      this.staleEl = el('span', { class: 'badge stale', hidden: true }, 'STALE');
      this.predEl = el('div', { class: 'prediction', 'data-testid': 'prediction-' + sensor, hidden: true });
      this.root = el('div', { class: 'chart', 'data-testid': 'chart-' + sensor, 'data-points': '0', 'data-state': 'live' },
        el('header', {}, el('strong', {}, sensor), this.staleEl, this.valueEl), this.canvas, this.predEl);
    }

    load(points) {
      const old = this.points;
      this.points = points.map(([t, v]) => [nsToMs(t), v]);
      // Readings that arrived over SSE while the request was out are kept.
      const lastT = this.points.length ? this.points[this.points.length - 1][0] : -Infinity;
      for (const p of old) if (p[0] > lastT) this.points.push(p);
      this.updated();
    }

    append(t, v) {
      const pts = this.points;
      if (!pts.length || t > pts[pts.length - 1][0]) pts.push([t, v]);
      else if (t === pts[pts.length - 1][0]) pts[pts.length - 1][1] = v;
      else {
        let i = pts.length - 1;
        while (i > 0 && pts[i - 1][0] > t) i--;
        if (pts[i - 1] && pts[i - 1][0] === t) pts[i - 1][1] = v;
        else pts.splice(i, 0, [t, v]);
      }
      if (!this.latest || t >= this.latest.ts) this.latest = { ts: t, value: v };
      this.updated();
    }

    updated() {
      const cut = Date.now() - WINDOW_MS;
      let drop = 0;
      while (drop < this.points.length && this.points[drop][0] < cut) drop++;
      if (this.points.length - drop > MAX_CHART_POINTS) drop = this.points.length - MAX_CHART_POINTS;
      if (drop) this.points.splice(0, drop);
      this.root.dataset.points = String(this.points.length);
      const last = this.points[this.points.length - 1];
      if (last) this.root.dataset.lastTs = String(Math.round(last[0]));
      if (last && (!this.latest || last[0] >= this.latest.ts)) this.latest = { ts: last[0], value: last[1] };
      this.valueEl.textContent = this.latest ? fmtValue(this.latest.value) : '–';
      this.dirty();
    }

    setStale(stale) {
      if (this.stale === stale) return;
      this.stale = stale;
      this.staleEl.hidden = !stale;
      this.root.classList.toggle('stale', stale);
      this.root.dataset.state = stale ? 'stale' : 'live';
      this.dirty();
    }

    setPredictions(list) {
      this.predictions = list;
      const p = list[0] && list[0].alert.prediction;
      if (p) {
        const now = Date.now();
        const eta = nsToMs(p.eta_ns) - now, lo = nsToMs(p.low_ns) - now, hi = nsToMs(p.high_ns) - now;
        this.predEl.textContent = `reaches ${String(Number(p.limit.toPrecision(4)))} in about ${hours(eta)} (${hours(lo).replace(/ (h|min)$/, '')}–${hours(hi)})`;
        this.predEl.hidden = false;
      } else this.predEl.hidden = true;
      this.dirty();
    }

    dirty() {
      if (!this.frame) this.frame = requestAnimationFrame(() => this.draw());
    }

    draw() {
      this.frame = 0;
      const cv = this.canvas;
      const dpr = window.devicePixelRatio || 1;
      const w = cv.clientWidth || 460, h = cv.clientHeight || 180;
      if (cv.width !== Math.round(w * dpr) || cv.height !== Math.round(h * dpr)) {
        cv.width = Math.round(w * dpr);
        cv.height = Math.round(h * dpr);
      }
      const g = cv.getContext('2d');
      g.setTransform(dpr, 0, 0, dpr, 0, 0);
      g.clearRect(0, 0, w, h);
      const now = Date.now();
      const t0 = now - WINDOW_MS;
      const pred = this.predictions[0] && this.predictions[0].alert.prediction;
      const left = 44, right = 8, top = 8, bottom = 20;
      const plotW = w - left - right;
      const liveW = pred ? plotW * 0.72 : plotW;
      const predEnd = pred ? Math.max(nsToMs(pred.high_ns), nsToMs(pred.eta_ns)) * 1.0 : now;
      const x = (t) => {
        if (t <= now || !pred) return left + ((t - t0) / WINDOW_MS) * liveW;
        return left + liveW + ((t - now) / Math.max(1, predEnd - now)) * (plotW - liveW);
      };
      let lo = Infinity, hi = -Infinity;
      for (const p of this.points) {
        if (p[1] < lo) lo = p[1];
        if (p[1] > hi) hi = p[1];
      }
      if (pred) {
        lo = Math.min(lo, pred.limit, pred.value_now);
        hi = Math.max(hi, pred.limit, pred.value_now);
      }
      if (!isFinite(lo)) (lo = 0), (hi = 1);
      if (hi - lo < 1e-9) (lo -= 1), (hi += 1);
      const pad = (hi - lo) * 0.08;
      lo -= pad;
      hi += pad;
      const y = (v) => top + (1 - (v - lo) / (hi - lo)) * (h - top - bottom);

      // axes and grid
      g.strokeStyle = '#d8dee4';
      g.fillStyle = '#6a737d';
      g.font = '11px system-ui, sans-serif';
      g.lineWidth = 1;
      for (let i = 0; i <= 4; i++) {
        const v = lo + ((hi - lo) * i) / 4;
        const yy = Math.round(y(v)) + 0.5;
        g.beginPath();
        g.moveTo(left, yy);
        g.lineTo(w - right, yy);
        g.stroke();
        g.fillText(fmtValue(v), 2, yy + 4);
      }
      for (let m = 15; m >= 0; m -= 5) {
        const xx = x(now - m * 60000);
        g.fillText(m ? `-${m} min` : 'now', Math.min(xx - 12, w - 30), h - 5);
      }

      // trips and events: vertical markers on the same time axis
      for (const e of this.events) {
        if (e.t < t0 || e.t > now) continue;
        const xx = Math.round(x(e.t)) + 0.5;
        g.strokeStyle = e.severity === 'critical' || /trip/.test(e.kind) ? '#cf222e' : '#9a6700';
        g.setLineDash([3, 3]);
        g.beginPath();
        g.moveTo(xx, top);
        g.lineTo(xx, h - bottom);
        g.stroke();
        g.setLineDash([]);
        g.fillStyle = g.strokeStyle;
        g.fillText(e.kind, xx + 2, top + 10);
      }

      // prediction: limit line across, band from low to high, the most likely time marked
      if (pred) {
        const xNow = x(now);
        g.fillStyle = 'rgba(207, 34, 46, 0.12)';
        const xl = x(Math.max(now, nsToMs(pred.low_ns))), xh = x(nsToMs(pred.high_ns));
        g.fillRect(xl, top, Math.max(1, xh - xl), h - top - bottom);
        g.strokeStyle = '#cf222e';
        g.setLineDash([6, 4]);
        g.beginPath();
        g.moveTo(left, y(pred.limit));
        g.lineTo(w - right, y(pred.limit));
        g.stroke();
        g.setLineDash([]);
        g.beginPath();
        g.moveTo(xNow, y(pred.value_now));
        g.lineTo(x(nsToMs(pred.eta_ns)), y(pred.limit));
        g.stroke();
        g.fillStyle = '#cf222e';
        g.fillText('limit ' + fmtValue(pred.limit), left + 2, y(pred.limit) - 3);
        g.fillText('forecast', xNow + 4, h - bottom - 4);
        g.strokeStyle = '#6a737d';
        g.beginPath();
        g.moveTo(Math.round(xNow) + 0.5, top);
        g.lineTo(Math.round(xNow) + 0.5, h - bottom);
        g.stroke();
      }

      // the data
      g.strokeStyle = this.stale ? '#8c959f' : '#0969da';
      g.lineWidth = 1.5;
      if (this.stale) g.setLineDash([4, 3]);
      g.beginPath();
      let started = false;
      for (const [t, v] of this.points) {
        if (t < t0) continue;
        const xx = x(Math.min(t, now)), yy = y(v);
        if (started) g.lineTo(xx, yy);
        else g.moveTo(xx, yy), (started = true);
      }
      g.stroke();
      g.setLineDash([]);
      if (this.stale) {
        g.fillStyle = 'rgba(246, 248, 250, 0.55)';
        g.fillRect(left, top, plotW, h - top - bottom);
        g.fillStyle = '#9a6700';
        g.font = 'bold 13px system-ui, sans-serif';
        g.fillText('STALE: not current', left + 8, top + 28);
      }
    }
  }

  // ---- alerts --------------------------------------------------------------------------------
  function alertsView() {
    let show = 'active';
    const tabs = el('div', { class: 'toolbar' });
    const table = el('div', {});
    const formBox = el('div', {});
    view.append(el('h1', {}, 'Alerts'), tabs, formBox, table);

    function renderTabs() {
      tabs.replaceChildren(
        ...[['active', 'Firing & pending'], ['firing', 'Firing'], ['pending', 'Pending'], ['resolved', 'Resolved'], ['all', 'All']].map(([k, label]) =>
          el('button', { type: 'button', 'data-testid': 'tab-' + k, 'aria-pressed': String(show === k), onclick: () => { show = k; render(); } }, show === k ? el('b', {}, label) : label),
        ),
      );
    }

    async function ack(fp) {
      clearMessages();
      try {
        const v = await api('POST', `/alerts/${encodeURIComponent(fp)}/ack`, {});
        const i = state.alerts.findIndex((x) => x.alert.fingerprint === fp);
        if (i >= 0 && v && v.alert) state.alerts[i] = v;
        showNotice(`Acknowledged: ${v && v.alert ? v.alert.summary : fp}`);
        render();
      } catch (e) {
        if (e.status !== 401) showError(e.message);
      }
    }

    function silenceForm(v) {
      const rows = Object.entries(v.alert.labels || {}).map(([label, value]) => {
        const on = el('input', { type: 'checkbox', checked: ['agent', 'rule', 'sensor'].includes(label) });
        const val = el('input', { type: 'text', value, size: 30 });
        return { label, on, val, row: el('label', {}, on, ' ', el('code', {}, label), ' = ', val) };
      });
      const duration = el('select', { 'data-testid': 'silence-duration' },
        [['1h', 3600], ['4h', 14400], ['12h', 43200], ['1d', 86400], ['1w', 604800]].map(([l, s]) => el('option', { value: s }, l)));
      const comment = el('input', { type: 'text', placeholder: 'why (required)', size: 50, 'data-testid': 'silence-comment' });
      const submit = async (ev) => {
        ev.preventDefault();
        clearMessages();
        const matchers = rows.filter((r) => r.on.checked).map((r) => ({ label: r.label, value: r.val.value, op: 'equal' }));
        if (!matchers.length) return showError('A silence needs at least one matcher.');
        if (!comment.value.trim()) return showError('Say why in the comment.');
        try {
          const r = await api('POST', '/silences', { matchers, duration_s: Number(duration.value), comment: comment.value.trim() });
          formBox.replaceChildren();
          showNotice(`Silence ${r && r.id} created.`);
          loadAlerts();
        } catch (e) {
          if (e.status !== 401) showError(e.message);
        }
      };
      formBox.replaceChildren(
        el('form', { class: 'silence-form', 'data-testid': 'silence-form', onsubmit: submit },
          el('strong', {}, 'Silence alerts matching:'),
          rows.map((r) => r.row),
          el('label', {}, 'for ', duration),
          comment,
          el('div', {}, el('button', { type: 'submit', 'data-testid': 'silence-submit' }, 'Create silence'), ' ',
            el('button', { type: 'button', onclick: () => formBox.replaceChildren() }, 'Cancel')),
        ),
      );
    }

    function render() {
      renderTabs();
      const order = { firing: 0, pending: 1, resolved: 2 };
      const list = state.alerts
        .filter((v) => show === 'all' || (show === 'active' ? v.alert.state !== 'resolved' : v.alert.state === show))
        .sort((a, b) => order[a.alert.state] - order[b.alert.state] || b.alert.started_ns - a.alert.started_ns);
      const mayAct = roleAtLeast('maintenance');
      if (!list.length) return table.replaceChildren(el('p', { class: 'muted', 'data-testid': 'no-alerts' }, 'No alerts.'));
      table.replaceChildren(
        el('table', { class: 'list', 'data-testid': 'alerts-table' },
          el('tr', {}, ['State', 'Severity', 'Summary', 'Machine', 'Since', 'Acked by', 'Flags', ''].map((h) => el('th', {}, h))),
          list.map((v) => {
            const a = v.alert;
            const agent = (a.labels || {}).agent;
            const flags = [];
            if (v.silenced_by && v.silenced_by.length) flags.push(el('span', { class: 'flag', title: v.silenced_by.join(', ') }, 'silenced'));
            if (v.inhibited) flags.push(el('span', { class: 'flag', title: v.inhibited_by || '' }, 'inhibited'));
            if (v.flapping) flags.push(el('span', { class: 'flag' }, 'flapping'));
            return el('tr', { class: a.state, 'data-testid': 'alert-' + a.fingerprint, 'data-state': a.state, 'data-acked': a.acked_by ? 'yes' : 'no' },
              el('td', {}, el('span', { class: 'badge ' + a.state }, a.state.toUpperCase())),
              el('td', {}, el('span', { class: 'badge ' + a.severity }, a.severity)),
              el('td', {}, a.summary),
              el('td', {}, agent ? el('a', { href: '#/agents/' + encodeURIComponent(agent) }, agent) : '–'),
              el('td', { title: fmtTime(a.started_ns) }, ago(a.started_ns)),
              el('td', { 'data-testid': 'acked-' + a.fingerprint }, a.acked_by ? `${a.acked_by} (${ago(a.acked_ns)})` : '–'),
              el('td', {}, flags),
              el('td', {}, mayAct && a.state !== 'resolved' && !a.acked_by ? el('button', { type: 'button', 'data-testid': 'ack-' + a.fingerprint, onclick: () => ack(a.fingerprint) }, 'Ack') : null, ' ',
                mayAct ? el('button', { type: 'button', 'data-testid': 'silence-' + a.fingerprint, onclick: () => silenceForm(v) }, 'Silence…') : null),
            );
          }),
        ),
      );
    }
    state.onAlerts = render;
    render();
    loadAlerts();
  }

  // ---- rules ---------------------------------------------------------------------------------
  function rulesView(initial) {
    const pick = el('select', { 'data-testid': 'rules-agent' }, el('option', { value: '' }, 'pick an agent…'));
    for (const id of state.order) pick.append(el('option', { value: id, selected: id === initial }, id));
    const version = el('span', { class: 'muted', 'data-testid': 'rules-version' });
    const text = el('textarea', { rows: 22, spellcheck: 'false', 'data-testid': 'rules-toml' });
    const check = el('button', { type: 'button', 'data-testid': 'rules-check' }, 'Check');
    const push = el('button', { type: 'button', class: 'danger', disabled: true, 'data-testid': 'rules-push' }, 'Push to agent');
    const problems = el('div', { 'data-testid': 'rules-problems' });
    view.append(el('h1', {}, 'Rules'), el('div', { class: 'toolbar' }, pick, version), text,
      el('div', { class: 'actions' }, check, push, el('span', { class: 'muted' }, 'Push is enabled once Check finds no problem in this exact text.')), problems);
    let checked = null;

    async function load() {
      clearMessages();
      problems.replaceChildren();
      push.disabled = true;
      checked = null;
      if (!pick.value) return;
      history.replaceState(null, '', '#/rules/' + encodeURIComponent(pick.value));
      try {
        const r = await api('GET', `/agents/${encodeURIComponent(pick.value)}/rules`);
        version.textContent = r.version === null || r.version === undefined ? 'no rule version reported yet' : 'running version ' + r.version;
        text.value = r.toml || '';
      } catch (e) {
        if (e.status !== 401) showError(e.message);
      }
    }
    pick.addEventListener('change', load);
    text.addEventListener('input', () => {
      push.disabled = true;
      checked = null;
    });
    check.addEventListener('click', async () => {
      clearMessages();
      push.disabled = true;
      const toml = text.value;
      try {
        const r = await api('POST', '/rules/check', { toml, agent: pick.value || undefined });
        if (r.ok) {
          problems.replaceChildren(el('p', { class: 'notice', 'data-testid': 'rules-ok' }, 'No problems.'));
          checked = toml;
          push.disabled = !pick.value;
        } else {
          problems.replaceChildren(el('ul', { class: 'problems' }, (r.problems || []).map((p) => el('li', {}, el('code', {}, p.key), ': ', p.message))));
        }
      } catch (e) {
        if (e.status !== 401) showError(e.message);
      }
    });
    push.addEventListener('click', async () => {
      clearMessages();
      if (checked !== text.value) return showError('Check the rules again before pushing.');
      try {
        const r = await api('POST', `/agents/${encodeURIComponent(pick.value)}/rules`, { toml: text.value });
        showNotice(`Rules sent to ${pick.value} (command ${r && r.command_id}).`);
      } catch (e) {
        if (e.status === 400 && e.body && e.body.problems) {
          problems.replaceChildren(el('ul', { class: 'problems' }, e.body.problems.map((p) => el('li', {}, el('code', {}, p.key), ': ', p.message))));
        } else if (e.status !== 401) showError(e.message);
      }
    });
    if (initial) load();
  }

  // ---- audit ---------------------------------------------------------------------------------
  function auditView() {
    const table = el('div', {});
    const refresh = el('button', { type: 'button', 'data-testid': 'audit-refresh' }, 'Refresh');
    view.append(el('h1', {}, 'Audit log'), el('div', { class: 'toolbar' }, refresh), table);
    async function load() {
      clearMessages();
      try {
        const list = (await api('GET', '/audit?limit=200')) || [];
        table.replaceChildren(
          el('table', { class: 'list', 'data-testid': 'audit-table' },
            el('tr', {}, ['Time', 'Agent', 'Issuer', 'Action', 'Verdict', 'Detail'].map((h) => el('th', {}, h))),
            list.map((r) => el('tr', { 'data-verdict': r.verdict },
              el('td', {}, fmtTime(r.ts_ns)), el('td', {}, r.agent), el('td', {}, r.issuer), el('td', {}, r.action),
              el('td', {}, el('span', { class: 'badge ' + (r.verdict === 'refused' || r.verdict === 'failed' ? 'firing' : r.verdict === 'executed' ? 'resolved' : 'info') }, r.verdict)),
              el('td', {}, r.detail))),
          ),
        );
      } catch (e) {
        if (e.status !== 401) showError(e.message);
      }
    }
    refresh.addEventListener('click', load);
    load();
  }

  // ---- go ------------------------------------------------------------------------------------
  login();
})();
