'use strict';
// The porch status page: fetch the status JSON every few seconds (?refresh=N, default 2) and
// draw it. Every value reaches the page through textContent or attributes, never as markup:
// paths and addresses come from clients.
(() => {
  const SVG = 'http://www.w3.org/2000/svg';
  const CHART_HEIGHT = 220;
  const MARGIN = { top: 12, right: 16, bottom: 26, left: 64 };
  const MIN_WINDOW_SECONDS = 60; // a short history is drawn at the right of a one-minute axis
  const TIME_STEPS = [5, 10, 15, 30, 60, 120, 300, 600];

  const jsonUrl = document.body.dataset.json;
  const refreshSeconds = refreshFrom(location.search);
  let latest = null; // the last document drawn, kept to redraw the charts on resize
  let lastAnswer = null;

  function refreshFrom(search) {
    const asked = Number.parseFloat(new URLSearchParams(search).get('refresh'));
    return Number.isFinite(asked) ? Math.min(Math.max(asked, 1), 3600) : 2;
  }

  // --- DOM helpers --------------------------------------------------------------------------

  function element(tag, text, className) {
    const node = document.createElement(tag);
    if (text !== undefined) node.textContent = text;
    if (className) node.className = className;
    return node;
  }

  function shape(tag, attributes) {
    const node = document.createElementNS(SVG, tag);
    for (const [name, value] of Object.entries(attributes)) node.setAttribute(name, String(value));
    return node;
  }

  function label(x, y, text, className) {
    const node = shape('text', { x, y, class: className });
    node.textContent = text;
    return node;
  }

  // --- numbers as people read them ----------------------------------------------------------

  const missing = (value) => value === null || value === undefined;

  function formatCount(value) {
    return missing(value) ? '—' : Math.round(value).toLocaleString('en');
  }

  function formatRate(value) {
    if (missing(value)) return '—';
    if (value >= 1000) return `${(value / 1000).toFixed(1)}k`;
    if (value >= 10 || value === 0) return value.toFixed(0);
    return value.toFixed(value >= 1 ? 1 : 2);
  }

  function formatLatency(seconds) {
    if (missing(seconds)) return '—';
    if (seconds === 0) return '0';
    const ms = seconds * 1000;
    if (ms < 10) return `${ms.toFixed(ms < 1 ? 2 : 1)} ms`;
    if (ms < 1000) return `${ms.toFixed(0)} ms`;
    return `${seconds.toFixed(seconds < 10 ? 2 : 1)} s`;
  }

  function formatBytes(bytes) {
    if (missing(bytes)) return '—';
    const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];
    let value = bytes;
    let unit = 0;
    while (value >= 1024 && unit < units.length - 1) {
      value /= 1024;
      unit += 1;
    }
    return unit === 0 ? `${Math.round(value)} B` : `${value.toFixed(value < 10 ? 1 : 0)} ${units[unit]}`;
  }

  function formatDuration(seconds) {
    if (missing(seconds)) return '—';
    if (seconds < 60) return `${seconds.toFixed(seconds < 10 ? 1 : 0)} s`;
    const whole = Math.floor(seconds);
    const [days, hours, minutes, secs] = [whole / 86400, (whole % 86400) / 3600, (whole % 3600) / 60, whole % 60].map(
      Math.floor,
    );
    if (days) return `${days}d ${hours}h ${minutes}m`;
    if (hours) return `${hours}h ${minutes}m`;
    return `${minutes}m ${secs}s`;
  }

  function formatAgo(seconds) {
    if (seconds === 0) return 'now';
    return seconds < 120 ? `−${seconds}s` : `−${seconds / 60}m`;
  }

  function clock() {
    return new Date().toLocaleTimeString();
  }

  // --- charts --------------------------------------------------------------------------------

  const CHARTS = [
    {
      id: 'chart-requests',
      format: formatRate,
      floor: 1,
      area: true,
      series: (history) => [{ key: 'rps', label: 'requests/s', values: history.requests_per_second }],
    },
    {
      id: 'chart-latency',
      format: formatLatency,
      floor: 0.001,
      series: (history) => ['p50', 'p95', 'p99'].map((key) => ({ key, label: key, values: history[key] })),
    },
    {
      id: 'chart-codes',
      format: formatRate,
      floor: 1,
      series: (history) =>
        ['1xx', '2xx', '3xx', '4xx', '5xx'].map((code) => ({
          key: `c${code}`,
          label: code,
          values: (history.codes || {})[code],
        })),
    },
    {
      id: 'chart-connections',
      format: formatCount,
      floor: 1,
      whole: true,
      series: (history) => [
        { key: 'connections', label: 'open connections', values: history.connections },
        { key: 'inflight', label: 'requests in flight', values: history.in_flight },
      ],
    },
  ];

  const drawnCharts = new WeakMap(); // figure → what its hover readout needs

  function niceStep(rough) {
    const power = 10 ** Math.floor(Math.log10(rough));
    const fraction = rough / power;
    return (fraction <= 1 ? 1 : fraction <= 2 ? 2 : fraction <= 5 ? 5 : 10) * power;
  }

  function drawChart(chart, history) {
    const figure = document.getElementById(chart.id);
    const svg = figure.querySelector('svg');
    const times = history.time || [];
    const series = chart.series(history).map((line) => ({ ...line, values: line.values || [] }));
    const width = Math.max(Math.round(svg.getBoundingClientRect().width), 240);
    const [left, right, top, bottom] = [MARGIN.left, width - MARGIN.right, MARGIN.top, CHART_HEIGHT - MARGIN.bottom];
    svg.setAttribute('viewBox', `0 0 ${width} ${CHART_HEIGHT}`);

    const end = times.length ? times[times.length - 1] : 0;
    const span = Math.max(MIN_WINDOW_SECONDS, times.length ? end - times[0] : 0);
    const x = (time) => right - ((end - time) / span) * (right - left);
    let peak = 0;
    for (const line of series) for (const value of line.values) if (!missing(value) && value > peak) peak = value;
    const scaled = Math.max(peak * 1.05, chart.floor);
    const step = Math.max(niceStep(scaled / 4), chart.whole ? 1 : 0);
    const yMax = step * Math.ceil(scaled / step);
    const y = (value) => bottom - (value / yMax) * (bottom - top);

    const nodes = [];
    for (let index = 0; index * step <= yMax + step / 2; index += 1) {
      const value = index * step;
      nodes.push(shape('line', { x1: left, x2: right, y1: y(value), y2: y(value), class: index ? 'gridline' : 'axis' }));
      nodes.push(label(left - 8, y(value) + 4, chart.format(value), 'tick y'));
    }
    const timeStep = TIME_STEPS.find((candidate) => span / candidate <= 6) || TIME_STEPS[TIME_STEPS.length - 1];
    for (let ago = 0; ago <= span; ago += timeStep) {
      const at = right - (ago / span) * (right - left);
      nodes.push(shape('line', { x1: at, x2: at, y1: bottom, y2: bottom + 4, class: 'axis' }));
      nodes.push(label(at, CHART_HEIGHT - 6, formatAgo(ago), 'tick x'));
    }

    let drawn = 0;
    for (let index = 0; index < times.length; index += 1) {
      if (series.some((line) => !missing(line.values[index]))) drawn += 1;
    }
    for (const line of series) {
      const runs = [];
      let run = [];
      times.forEach((time, index) => {
        const value = line.values[index];
        if (missing(value)) {
          if (run.length) runs.push(run);
          run = [];
        } else {
          run.push([x(time).toFixed(1), y(value).toFixed(1)]);
        }
      });
      if (run.length) runs.push(run);
      if (chart.area) {
        const area = runs.map((points) => `M${points[0][0]},${bottom}L${points.join('L')}L${points[points.length - 1][0]},${bottom}Z`);
        nodes.push(shape('path', { d: area.join(''), class: `area series-${line.key}` }));
      }
      // A lone point (its neighbours had no value) is a zero-length stroke: round caps make it a dot.
      const path = runs.map((points) => `M${points.join('L')}${points.length === 1 ? 'h0' : ''}`);
      nodes.push(shape('path', { d: path.join(''), class: `line series-${line.key}` }));
    }
    if (!drawn) nodes.push(label((left + right) / 2, (top + bottom) / 2, 'waiting for data…', 'empty'));
    const guide = shape('line', { x1: 0, x2: 0, y1: top, y2: bottom, class: 'guide', visibility: 'hidden' });
    nodes.push(guide);
    svg.replaceChildren(...nodes);
    figure.dataset.points = String(drawn);
    drawnCharts.set(figure, { chart, times, series, x, guide, left, right });
    showLegend(figure, null);
  }

  // The legend shows each series' latest value, or its value where the pointer is.
  function showLegend(figure, index) {
    const drawing = drawnCharts.get(figure);
    const items = drawing.series.map((line) => {
      let at = index;
      if (at === null) {
        at = line.values.length - 1;
        while (at > 0 && missing(line.values[at])) at -= 1;
      }
      const item = element('li');
      item.dataset.series = line.key;
      item.append(
        element('span', undefined, `swatch series-${line.key}`),
        element('span', line.label, 'name'),
        element('span', drawing.chart.format(line.values[at]), 'value'),
      );
      return item;
    });
    if (index !== null) {
      const ago = Math.round(drawing.times[drawing.times.length - 1] - drawing.times[index]);
      items.push(element('li', ago ? `${ago} s ago` : 'now', 'when'));
    }
    figure.querySelector('.legend').replaceChildren(...items);
  }

  function hover(event) {
    const figure = event.currentTarget.closest('figure');
    const drawing = drawnCharts.get(figure);
    if (!drawing || !drawing.times.length) return;
    const pointer = event.clientX - event.currentTarget.getBoundingClientRect().left;
    let nearest = 0;
    drawing.times.forEach((time, index) => {
      if (Math.abs(drawing.x(time) - pointer) < Math.abs(drawing.x(drawing.times[nearest]) - pointer)) nearest = index;
    });
    const at = drawing.x(drawing.times[nearest]).toFixed(1);
    drawing.guide.setAttribute('x1', at);
    drawing.guide.setAttribute('x2', at);
    drawing.guide.setAttribute('visibility', 'visible');
    showLegend(figure, nearest);
  }

  function unhover(event) {
    const figure = event.currentTarget.closest('figure');
    const drawing = drawnCharts.get(figure);
    if (!drawing) return;
    drawing.guide.setAttribute('visibility', 'hidden');
    showLegend(figure, null);
  }

  // --- the server, its workers, its requests, its mounts ---------------------------------------

  function renderFacts(doc) {
    const workers = doc.workers || [];
    const requests = (doc.requests || []).reduce((sum, entry) => sum + entry.count, 0);
    const facts = [
      ['software', 'Software', doc.software],
      ['version', 'Version', doc.version],
      ['python', 'Python', doc.python],
      ['concurrency', 'Concurrency', doc.concurrency],
      ['state', 'State', doc.state],
      ['generation', 'Generation', doc.generation],
      ['uptime', 'Uptime', formatDuration(doc.uptime_seconds)],
      ['workers', 'Workers', doc.workers_target === undefined ? undefined : `${workers.length} / ${doc.workers_target}`],
      ['master', 'Master PID', doc.master_pid],
      ['pid', 'Answered by PID', doc.pid],
      ['requests', 'Requests', doc.requests ? formatCount(requests) : undefined],
      ['in-flight', 'In flight', doc.in_flight],
      ['connections', 'Open connections', doc.connections ? formatCount(doc.connections.open) : undefined],
    ];
    const nodes = facts
      .filter(([, , value]) => !missing(value))
      .map(([key, name, value]) => {
        const fact = element('div', undefined, 'fact');
        const shown = element('dd', String(value));
        fact.dataset.fact = key;
        if (key === 'state') {
          fact.dataset.state = String(value);
          if (value !== 'ready') fact.classList.add('alert');
        }
        fact.append(element('dt', name), shown);
        return fact;
      });
    document.getElementById('facts').replaceChildren(...nodes);
    document.getElementById('software').textContent = doc.software || 'porch';
    document.title = `${doc.software || 'porch'} status${doc.state && doc.state !== 'ready' ? ` — ${doc.state}` : ''}`;
  }

  function slots(worker) {
    const busy = worker.busy || [];
    const count = Math.max(worker.threads || 0, busy.length);
    const holder = element('td', undefined, 'slots');
    holder.dataset.threads = String(count);
    holder.dataset.busy = String(busy.length);
    for (let index = 0; index < count; index += 1) {
      const request = busy[index];
      const slot = element('span', undefined, `slot ${request ? 'busy' : 'idle'}`);
      slot.title = request ? `${request.thread}: ${request.method} ${request.path}` : 'idle';
      holder.append(slot);
    }
    if (worker.children) holder.append(element('span', `${worker.children} children`, 'children'));
    return holder;
  }

  function renderWorkers(workers) {
    const rows = workers.map((worker) => {
      const row = element('tr');
      const connections = worker.connections || {};
      row.dataset.pid = String(worker.pid);
      row.dataset.state = String(worker.state);
      const state = element('td', String(worker.state), worker.state === 'serving' ? 'state' : 'state alert');
      row.append(
        element('td', String(worker.pid)),
        element('td', String(worker.generation)),
        state,
        element('td', formatCount(worker.requests), 'num'),
        element('td', formatBytes(worker.rss_bytes), 'num'),
        element('td', formatCount(connections.open), 'num'),
        element('td', formatCount(connections.idle), 'num'),
        element('td', formatCount(connections.active), 'num'),
        slots(worker),
      );
      return row;
    });
    document.querySelector('#workers tbody').replaceChildren(...rows);
  }

  function renderBusy(workers) {
    const requests = [];
    for (const worker of workers) for (const request of worker.busy || []) requests.push({ worker, request });
    requests.sort((a, b) => b.request.age_seconds - a.request.age_seconds);
    const rows = requests.map(({ worker, request }) => {
      const row = element('tr');
      row.dataset.pid = String(worker.pid);
      row.dataset.requestId = String(request.request_id);
      row.append(
        element('td', String(worker.pid)),
        element('td', String(request.thread)),
        element('td', String(request.method)),
        element('td', String(request.path), 'path'),
        element('td', String(request.client)),
        element('td', formatDuration(request.age_seconds), 'num'),
        element('td', String(request.request_id), 'id'),
      );
      return row;
    });
    document.querySelector('#busy tbody').replaceChildren(...rows);
    document.getElementById('busy-none').hidden = rows.length > 0;
  }

  function renderMounts(mounts) {
    const rows = mounts.map((mount) => {
      const row = element('tr');
      row.dataset.mount = String(mount.mount);
      row.append(
        element('td', String(mount.mount), 'path'),
        element('td', String(mount.type)),
        element('td', formatCount(mount.requests), 'num'),
        element('td', formatCount(mount.errors), `num${mount.errors ? ' alert' : ''}`),
        element('td', formatBytes(mount.sent), 'num'),
        element('td', formatLatency(mount.p50), 'num'),
        element('td', formatLatency(mount.p95), 'num'),
        element('td', formatLatency(mount.p99), 'num'),
      );
      return row;
    });
    document.querySelector('#mounts tbody').replaceChildren(...rows);
  }

  function render(doc) {
    document.getElementById('no-metrics').hidden = Boolean(doc.history);
    renderFacts(doc);
    for (const chart of CHARTS) drawChart(chart, doc.history || {});
    renderWorkers(doc.workers || []);
    renderBusy(doc.workers || []);
    renderMounts(doc.mounts || []);
  }

  function showConnection(state, text) {
    const status = document.getElementById('connection');
    status.dataset.state = state;
    status.textContent = text;
  }

  // --- polling -------------------------------------------------------------------------------

  async function refresh() {
    let doc;
    try {
      const response = await fetch(jsonUrl, { cache: 'no-store', headers: { Accept: 'application/json' } });
      if (!response.ok) throw new Error(`HTTP ${response.status}`);
      doc = await response.json();
    } catch (error) {
      const since = lastAnswer ? `since ${lastAnswer}` : 'yet';
      showConnection('error', `No answer ${since} (${error.message}); retrying every ${refreshSeconds} s`);
      setTimeout(refresh, refreshSeconds * 1000);
      return;
    }
    setTimeout(refresh, refreshSeconds * 1000); // before drawing: a drawing error must not stop the page
    latest = doc;
    lastAnswer = clock();
    render(doc);
    showConnection('ok', `Updated ${lastAnswer}, every ${refreshSeconds} s`);
  }

  let resizing = false;
  window.addEventListener('resize', () => {
    if (resizing || !latest) return;
    resizing = true;
    requestAnimationFrame(() => {
      resizing = false;
      for (const chart of CHARTS) drawChart(chart, latest.history || {});
    });
  });
  for (const svg of document.querySelectorAll('.chart svg')) {
    svg.addEventListener('mousemove', hover);
    svg.addEventListener('mouseleave', unhover);
  }
  refresh();
})();
