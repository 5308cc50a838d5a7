// What tests and the benchmark read from the page: window.__viewer.
//   firstFrameMs   ms from navigation start to the first frame showing the model / volume
//   frames         frames drawn so far; lastFrameAt: performance.now() of the last one
//   pending        loads in flight
//   settled()      resolves when nothing is loading, the view says it is idle (busy() is false:
//                  e.g. no splat sort in flight) and no frame was drawn for `quietMs`
//   errors         messages of failed loads (also shown to the user as banners)
//   marks          ms from navigation start at named steps (where the start-up time goes)

export const hooks = {
  firstFrameMs: null,
  frames: 0,
  lastFrameAt: 0,
  pending: 0,
  errors: [],
  mode: null,
  api: {},
  busy: () => false,
  marks: {},
  mark(name) {
    this.marks[name] = Math.round(performance.now());
  },
  frameDrawn(hasContent) {
    this.frames += 1;
    this.lastFrameAt = performance.now();
    if (hasContent && this.firstFrameMs === null) this.firstFrameMs = performance.now();
  },
  async track(promise) {
    this.pending += 1;
    try {
      return await promise;
    } finally {
      this.pending -= 1;
      this.lastFrameAt = performance.now();
    }
  },
  settled(quietMs = 600, timeoutMs = 60000) {
    const start = performance.now();
    return new Promise((resolve, reject) => {
      const check = () => {
        const now = performance.now();
        if (this.busy()) this.lastFrameAt = Math.max(this.lastFrameAt, now - quietMs / 2);
        else if (this.pending === 0 && now - this.lastFrameAt >= quietMs) return resolve(this.frames);
        if (now - start > timeoutMs) return reject(new Error(`not settled after ${timeoutMs} ms (pending ${this.pending})`));
        setTimeout(check, 50);
      };
      check();
    });
  },
};

window.__viewer = hooks;
