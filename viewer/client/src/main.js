// recon view: the page shell. Run tabs, banners, the side panel, and the capture or CT view
// (loaded on demand: a CT run does not download the splat renderer and vice versa).
//
// URL parameters: run=<id> (which run), beside=<id|none> (capture run shown beside),
// size=<px> (fixed canvas size, used by tests and the benchmark), mode=points|splats,
// preset=lung|soft|bone|brain|liver, layout=mpr|axial|coronal|sagittal|render, mip=1, slab=<mm>.

import { getJSON } from './api.js';
import { h, clear } from './dom.js';
import { RunPanel } from './runpanel.js';
import { hooks } from './testhooks.js';

const POLL_RUNNING_MS = 2000;
const POLL_IDLE_MS = 10000;
const params = new URLSearchParams(location.search);

const app = {
  runs: [],
  current: null, // {id, state, view, beside}
  pollTimer: null,
};

function setParam(key, value) {
  if (value === null || value === undefined) params.delete(key);
  else params.set(key, String(value));
  history.replaceState(null, '', `${location.pathname}?${params}`);
}

function showBanners(banners) {
  const box = document.getElementById('banners');
  clear(box);
  for (const b of banners) box.append(h('div', { class: `banner banner-${b.level}`, role: b.level === 'error' ? 'alert' : 'status' }, b.text));
}

function fatal(message) {
  showBanners([{ level: 'error', text: message }]);
}

function tabs() {
  const nav = document.getElementById('tabs');
  clear(nav);
  for (const run of app.runs) {
    nav.append(h('button', { class: `tab kind-${run.kind}${app.current?.id === run.id ? ' on' : ''}`, dataset: { run: String(run.id) }, title: run.path, onclick: () => openRun(run.id) },
      h('span', { class: 'tab-kind' }, run.kind === 'ct' ? 'CT' : 'splat'), ' ', run.name, ' ', h('span', { class: `dot status-${run.status}`, title: run.status })));
  }
}

function besideChoices(id) {
  return app.runs.filter((r) => r.kind === 'capture' && r.id !== id);
}

function defaultBeside(id) {
  if (params.get('beside') === 'none') return null;
  const asked = params.has('beside') ? Number(params.get('beside')) : null;
  const choices = besideChoices(id);
  if (asked !== null) return choices.find((r) => r.id === asked)?.id ?? null;
  return choices.length ? choices[0].id : null;
}

function allBanners(state, besideState) {
  const banners = [...state.banners];
  if (besideState) banners.push(...besideState.banners.map((b) => ({ ...b, text: `${besideState.name}: ${b.text}` })));
  return banners;
}

async function openRun(id) {
  clearTimeout(app.pollTimer);
  if (app.current?.view) app.current.view.dispose();
  const current = { id, state: null, view: null, beside: null };
  app.current = current;
  const stale = () => app.current !== current; // another tab was opened meanwhile
  setParam('run', id);
  tabs();
  const stage = document.getElementById('stage');
  clear(stage).append(h('p', { class: 'muted' }, 'loading…'));
  let state;
  try {
    state = await hooks.track(getJSON(`/api/run/${id}`));
  } catch (err) {
    return stale() || fatal(`cannot read run ${id}: ${err.message}`);
  }
  if (stale()) return;
  current.state = state;
  app.panel.update(state);
  try {
    let view;
    if (state.kind === 'capture') {
      const besideId = defaultBeside(id);
      const beside = besideId !== null ? await hooks.track(getJSON(`/api/run/${besideId}`)) : null;
      hooks.mark('capture:import');
      const { CaptureView } = await hooks.track(import('./capture.js'));
      hooks.mark('capture:imported');
      if (stale()) return;
      current.beside = beside;
      showBanners(allBanners(state, beside));
      view = new CaptureView(stage, state, {
        beside, besideChoices: besideChoices(id), params,
        onBeside: (other) => { setParam('beside', other === null ? 'none' : other); openRun(id); },
      });
    } else {
      hooks.mark('ct:import');
      const { CTView } = await hooks.track(import('./ct.js'));
      hooks.mark('ct:imported');
      if (stale()) return;
      showBanners(allBanners(state, null));
      view = new CTView(stage, state, { params });
    }
    current.view = view;
  } catch (err) {
    if (stale()) return;
    console.warn(err);
    fatal(`the ${state.kind} view could not start: ${err.message || err} (WebGL2 is required)`);
  }
  schedulePoll();
}

function schedulePoll() {
  const running = [app.current?.state, app.current?.beside].some((s) => s && s.status === 'running');
  app.pollTimer = setTimeout(poll, running ? POLL_RUNNING_MS : POLL_IDLE_MS);
}

async function poll() {
  const current = app.current;
  if (!current || !current.state) return;
  try {
    const state = await getJSON(`/api/run/${current.id}`);
    const beside = current.beside ? await getJSON(`/api/run/${current.beside.id}`) : null;
    if (app.current !== current) return;
    const changed = JSON.stringify(state) !== JSON.stringify(current.state) || JSON.stringify(beside) !== JSON.stringify(current.beside);
    if (changed) {
      current.state = state;
      current.beside = beside;
      showBanners(allBanners(state, beside));
      app.panel.update(state);
      current.view?.update(state, beside);
      const run = app.runs.find((r) => r.id === state.id);
      if (run && run.status !== state.status) {
        run.status = state.status;
        tabs();
      }
    }
  } catch (err) {
    showBanners([{ level: 'error', text: `lost contact with the recon view server (${err.message}); is it still running?` }]);
  }
  if (app.current === current) schedulePoll();
}

async function boot() {
  app.panel = new RunPanel(document.getElementById('side'), { onView: (name) => app.current?.view?.selectView?.(name) });
  try {
    app.runs = await hooks.track(getJSON('/api/runs'));
  } catch (err) {
    return fatal(`cannot reach the recon view server: ${err.message}`);
  }
  const asked = Number(params.get('run'));
  const first = app.runs.find((r) => r.id === asked) ? asked : 0;
  await openRun(first);
}

boot();
