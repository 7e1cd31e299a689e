// The live preview of one job: a render's image, drawn on a canvas from the pieces its
// bands bring, then the finished image; or a zoom movie's keyframes as thumbnails, as
// they land, then the finished video.

const KEYFRAMES = "fractal.keyframe";

export class Preview {
  constructor(canvas, image, title, note, download, keyframes, video) {
    Object.assign(this, { canvas, image, title, note, download, keyframes, video });
    this.jobId = null;
    this.reset(null);
  }

  reset(jobId) {
    this.jobId = jobId;
    this.drawn = 0;        // pieces drawn
    this.filled = 0;       // preview rows drawn
    this.fetching = false;
    this.finished = false;
    this.canvas.width = 1; this.canvas.height = 1;
    this.canvas.hidden = false;
    this.canvas.dataset.jobId = jobId || "";
    this.canvas.dataset.filled = "0";
    this.canvas.dataset.rows = "0";
    this.canvas.dataset.state = jobId ? "waiting" : "none";
    this.image.hidden = true; this.image.removeAttribute("src");
    this.keyframes.hidden = true; this.keyframes.replaceChildren();
    this.keyframes.dataset.jobId = jobId || "";
    this.keyframes.dataset.count = "0";
    this.video.hidden = true; this.video.removeAttribute("src"); this.video.load();
    this.download.hidden = true;
    this.note.textContent = "";
    this.title.textContent = jobId ? jobId : "none selected";
  }

  select(jobId) {
    if (jobId !== this.jobId) this.reset(jobId);
  }

  // Called with the job's row of each snapshot.
  async update(row, images) {
    if (!row || row.id !== this.jobId) return;
    const zoom = row.type === KEYFRAMES;
    if (zoom && this.keyframes.hidden) { this.canvas.hidden = true; this.keyframes.hidden = false; }
    const name = row.labels["fractaljob.name"];
    const what = zoom ? `zoom, ${row.labels.zoom || ""}, ${row.succeeded}/${row.total} keyframes` : "";
    this.title.textContent = `${name ? name + " · " : ""}${row.labels.size || ""} ${what} ${row.state}`;
    if (row.previews > this.drawn && !this.fetching) await this.fetchPieces(zoom);
    if (row.state === "succeeded" && !this.finished) this.finish(row, images, zoom);
    else if (["failed", "cancelled"].includes(row.state)) {
      this.canvas.dataset.state = row.state;
      this.note.textContent = row.reason || row.state;
    }
  }

  async fetchPieces(zoom) {
    this.fetching = true;
    const jobId = this.jobId;
    try {
      const response = await fetch(`/api/jobs/${encodeURIComponent(jobId)}/preview?since=${this.drawn}`);
      if (!response.ok || jobId !== this.jobId) return;
      const body = await response.json();
      if (!body.size) return;
      if (zoom) this.addKeyframes(body.pieces);
      else if (!(await this.drawBands(body, jobId))) return;
      this.drawn = body.next;
    } finally {
      this.fetching = false;
    }
  }

  async drawBands(body, jobId) {
    const [width, height] = body.size;
    if (this.canvas.width !== width || this.canvas.height !== height) {
      this.canvas.width = width; this.canvas.height = height;
      this.canvas.dataset.rows = String(height);
      const g = this.canvas.getContext("2d");
      g.fillStyle = "#10131a"; g.fillRect(0, 0, width, height);
    }
    const g = this.canvas.getContext("2d");
    for (const piece of body.pieces) {
      const image = new Image();
      image.src = `data:image/jpeg;base64,${piece.jpeg}`;
      await image.decode();
      if (jobId !== this.jobId) return false;
      const [first, last] = piece.rows;
      g.drawImage(image, 0, first, width, last - first);
      this.filled += last - first;
    }
    this.canvas.dataset.filled = String(this.filled);
    this.canvas.dataset.state = this.filled >= height ? "whole" : "partial";
    return true;
  }

  // Thumbnails in the movie's order: the shallowest keyframe (highest level) first.
  addKeyframes(pieces) {
    for (const piece of pieces) {
      const image = document.createElement("img");
      image.src = `data:image/jpeg;base64,${piece.jpeg}`;
      image.alt = `keyframe ${piece.index + 1} of ${piece.count}`;
      image.title = `keyframe ${piece.count - piece.index} of ${piece.count} (2^${piece.level} x the last frame's width)`;
      image.dataset.testid = "keyframe";
      image.dataset.level = String(piece.level);
      const later = [...this.keyframes.children].find((node) => Number(node.dataset.level) < piece.level);
      this.keyframes.insertBefore(image, later || null);
    }
    this.keyframes.dataset.count = String(this.keyframes.children.length);
  }

  finish(row, images, zoom) {
    this.finished = true;
    if (!images) {
      this.note.textContent = row.url
        ? `Finished. It is in storage at ${row.url} (this coordinator reads no storage: start it with --storage to show it here).`
        : "Finished.";
      return;
    }
    const name = `${row.labels["fractaljob.name"] || row.labels.fractal || "fractal"}-${row.id.slice(0, 8)}`;
    if (zoom) {
      const url = `/api/jobs/${encodeURIComponent(row.id)}/video`;
      this.video.src = url;
      this.video.hidden = false;
      this.keyframes.hidden = true;
      this.video.play().catch(() => {});  // muted, so allowed; if not, the controls are there
      this.download.href = url;
      this.download.download = `${name}.${(row.url || "").endsWith(".webm") ? "webm" : "mp4"}`;
      this.download.textContent = "Download video";
    } else {
      const url = `/api/jobs/${encodeURIComponent(row.id)}/image.png`;
      this.image.onload = () => { this.image.hidden = false; this.canvas.dataset.state = "image"; };
      this.image.src = url;
      this.download.href = url;
      this.download.download = `${name}.png`;
      this.download.textContent = "Download PNG";
    }
    this.download.hidden = false;
    this.note.textContent = "";
  }
}
