// The results viewer of `mmhvae view`: a grid of synchronised NiiVue viewers (rows: modalities; columns:
// prediction, ground truth, |error|, uncertainty) for one subject and input subset at a time, the evaluation
// tables with sortable columns, and the figures. Works from file:// without a server: every volume is a small
// script (volumes/N.js) that hands its base64 NIfTI to window.mmhvaeVolume, loaded only when it is shown.
"use strict";

(function () {
  const view = window.MMHVAE_VIEW;
  const { Niivue, NVImage, SLICE_TYPE } = window.niivue;
  // Browsers keep about 16 WebGL contexts per page: 4 rows x 4 columns is the most shown at once.
  const MAX_ROWS = 4;
  const COLUMNS = [
    { title: "prediction", kinds: ["prediction"] },
    { title: "ground truth", kinds: ["truth"] },
    { title: "|error|", kinds: ["error"] },
    { title: "uncertainty", kinds: ["sd", "interval low", "interval high"] },
  ];
  const SPREADS = new Set(["error", "sd"]);
  const status = { ready: false, loads: 0, errors: [] };
  window.MMHVAE_STATUS = status;

  function fail(where, error) {
    const text = `${where}: ${error && error.message ? error.message : error}`;
    status.errors.push(text);
    document.getElementById("message").textContent = text;
    console.error(text);
  }

  // ---------------------------------------------------------------------------------------------------
  // Volumes, loaded lazily through <script> tags (fetch of local files is blocked on file:// pages)
  // ---------------------------------------------------------------------------------------------------
  const pending = new Map();
  const loaded = new Map();

  window.mmhvaeVolume = function (id, base64) {
    const waiting = pending.get(id);
    if (waiting) waiting.resolve(base64);
  };

  function volumeData(id) {
    if (!loaded.has(id)) {
      loaded.set(id, new Promise((resolve, reject) => {
        pending.set(id, { resolve, reject });
        const script = document.createElement("script");
        script.src = view.volumes[id];
        script.dataset.volume = id;
        script.onerror = () => reject(new Error(`cannot read ${view.volumes[id]}`));
        document.head.appendChild(script);
      }));
    }
    return loaded.get(id);
  }

  function forgetVolumes() {
    // a new subject: drop the previous one's data so that a large cohort does not fill the memory
    document.querySelectorAll("script[data-volume]").forEach((s) => s.remove());
    pending.clear();
    loaded.clear();
  }

  // ---------------------------------------------------------------------------------------------------
  // The grid of viewers
  // ---------------------------------------------------------------------------------------------------
  const state = { subject: view.subjects[0], entry: 0, rowGroup: 0, uncertainty: "sd" };
  const viewers = [];

  async function makeGrid() {
    const grid = document.getElementById("grid");
    const rows = Math.min(MAX_ROWS, view.modalities.length);
    grid.style.gridTemplateColumns = `6em repeat(${COLUMNS.length}, 1fr)`;
    grid.appendChild(document.createElement("div"));
    COLUMNS.forEach((column) => {
      const head = document.createElement("div");
      head.className = "column-title";
      head.textContent = column.title;
      grid.appendChild(head);
    });
    for (let r = 0; r < rows; r++) {
      const label = document.createElement("div");
      label.className = "row-title";
      label.id = `row-${r}`;
      grid.appendChild(label);
      viewers.push([]);
      for (let c = 0; c < COLUMNS.length; c++) {
        const cell = document.createElement("div");
        cell.className = "cell";
        const canvas = document.createElement("canvas");
        canvas.id = `view-${r}-${c}`;
        // NiiVue passes its state on only from the focused canvas: let a click give it the focus
        canvas.tabIndex = 0;
        canvas.addEventListener("pointerdown", () => canvas.focus());
        const note = document.createElement("div");
        note.className = "note";
        cell.append(canvas, note);
        grid.appendChild(cell);
        const nv = new Niivue({ sliceType: SLICE_TYPE.AXIAL, backColor: [0, 0, 0, 1], show3Dcrosshair: false,
                                isColorbar: false, logLevel: "warn", dragAndDropEnabled: false,
                                crosshairColor: [0.2, 0.8, 1, 0.5], crosshairWidth: 0.5 });
        await nv.attachToCanvas(canvas);
        nv.onLocationChange = (location) => {
          document.getElementById("location").textContent = location && location.string ? location.string : "";
        };
        viewers[r].push({ nv, note });
      }
    }
    const all = viewers.flat().map((v) => v.nv);
    window.MMHVAE_VIEWERS = all;  // for scripted checks of the page
  }

  function linkViewers() {
    // each viewer passes its crosshair, slice and zoom to the others that show an image (from the one the user
    // is in); an empty NiiVue viewer cannot take a location (it has no extent)
    const sync = { "2d": true, "3d": true, crosshair: true, zoomPan: true, sliceType: true };
    const showing = viewers.flat().map((v) => v.nv).filter((nv) => nv.volumes.length > 0);
    viewers.flat().forEach(({ nv }) => {
      nv.broadcastTo(nv.volumes.length ? showing.filter((other) => other !== nv) : [], sync);
    });
  }

  function currentEntry() {
    return view.entries[state.subject][state.entry];
  }

  function cellVolume(entry, column, modality) {
    const kind = column.kinds.length > 1 ? state.uncertainty : column.kinds[0];
    if (kind === "truth") return { kind, id: (view.truth[state.subject] || {})[modality] };
    return { kind, id: ((entry.maps[kind] || {})[modality]) };
  }

  async function showCell(viewer, volume, modality) {
    const { nv, note } = viewer;
    while (nv.volumes.length > 0) nv.removeVolume(nv.volumes[0]);
    nv.canvas.style.visibility = volume.id ? "visible" : "hidden";
    note.textContent = volume.id ? "" : "not available";
    if (!volume.id) return;
    const window_ = view.windows[state.subject][modality][SPREADS.has(volume.kind) ? "spread" : "image"];
    const image = await NVImage.loadFromBase64({
      base64: await volumeData(volume.id), name: `${volume.id}.nii.gz`,
      colormap: SPREADS.has(volume.kind) ? "hot" : "gray", cal_min: window_[0], cal_max: window_[1],
    });
    nv.addVolume(image);
  }

  async function showEntry() {
    status.ready = false;
    const entry = currentEntry();
    const first = viewers[0][0].nv;
    const position = first.volumes.length ? Array.from(first.scene.crosshairPos) : null;
    const shown = view.modalities.slice(state.rowGroup * MAX_ROWS, (state.rowGroup + 1) * MAX_ROWS);
    const jobs = [];
    viewers.forEach((row, r) => {
      const modality = shown[r];
      const label = document.getElementById(`row-${r}`);
      label.textContent = modality ? modality + (entry.inputs.includes(modality) ? " (input)" : "") : "";
      row.forEach((viewer, c) => {
        const volume = modality ? cellVolume(entry, COLUMNS[c], modality) : { id: null };
        jobs.push(showCell(viewer, volume, modality));
      });
    });
    await Promise.all(jobs);
    linkViewers();
    viewers.flat().forEach(({ nv }) => {
      if (position && nv.volumes.length) nv.scene.crosshairPos = position;
      nv.drawScene();
    });
    status.loads += 1;
    requestAnimationFrame(() => { status.ready = true; });
  }

  // ---------------------------------------------------------------------------------------------------
  // Selectors
  // ---------------------------------------------------------------------------------------------------
  function fill(select, options) {
    select.replaceChildren(...options.map(([value, text]) => new Option(text, value)));
  }

  function fillEntries() {
    fill(document.getElementById("subset"), view.entries[state.subject].map((e, i) => [String(i), e.label]));
    state.entry = 0;
  }

  function onChange(id, apply) {
    document.getElementById(id).addEventListener("change", (event) => {
      apply(event.target.value);
      showEntry().catch((error) => fail("showing the images", error));
    });
  }

  function makeSelectors() {
    fill(document.getElementById("subject"), view.subjects.map((s) => [s, s]));
    fillEntries();
    const groups = Math.ceil(view.modalities.length / MAX_ROWS);
    const rows = document.getElementById("rows");
    fill(rows, [...Array(groups).keys()].map((g) => [String(g),
      view.modalities.slice(g * MAX_ROWS, (g + 1) * MAX_ROWS).join(", ")]));
    rows.parentElement.hidden = groups < 2;
    onChange("subject", (value) => { state.subject = value; forgetVolumes(); fillEntries(); });
    onChange("subset", (value) => { state.entry = Number(value); });
    onChange("uncertainty", (value) => { state.uncertainty = value; });
    onChange("rows", (value) => { state.rowGroup = Number(value); });
  }

  // ---------------------------------------------------------------------------------------------------
  // Sortable tables: a click on a header sorts by that column (numbers by their leading value)
  // ---------------------------------------------------------------------------------------------------
  function sortKey(text) {
    const number = parseFloat(text.replace(/[*_]/g, ""));
    return Number.isNaN(number) ? text : number;
  }

  function makeSortable(table) {
    table.querySelectorAll("thead th").forEach((th, column) => {
      th.title = "sort";
      th.addEventListener("click", () => {
        const body = table.tBodies[0];
        const ascending = th.dataset.order !== "ascending";
        table.querySelectorAll("thead th").forEach((other) => delete other.dataset.order);
        th.dataset.order = ascending ? "ascending" : "descending";
        const rows = Array.from(body.rows);
        rows.sort((a, b) => {
          const x = sortKey(a.cells[column].textContent), y = sortKey(b.cells[column].textContent);
          const order = typeof x === typeof y ? (x < y ? -1 : x > y ? 1 : 0) : (typeof x === "number" ? -1 : 1);
          return ascending ? order : -order;
        });
        body.append(...rows);
      });
    });
  }

  window.addEventListener("error", (event) => fail("page", event.message));
  window.addEventListener("unhandledrejection", (event) => fail("page", event.reason));
  document.querySelectorAll("#tables table").forEach(makeSortable);
  makeSelectors();
  makeGrid().then(showEntry).catch((error) => fail("starting the viewers", error));
})();
