// The live preview of one render: the pieces its bands bring, drawn on a canvas
// as the event stream says they arrived, then the finished image.

export class Preview {
  constructor(canvas, image, title, note, download) {
    Object.assign(this, { canvas, image, title, note, download });
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
    this.canvas.dataset.jobId = jobId || "";
    this.canvas.dataset.filled = "0";
    this.canvas.dataset.rows = "0";
    this.canvas.dataset.state = jobId ? "waiting" : "none";
    this.image.hidden = true; this.image.removeAttribute("src");
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
    const name = row.labels["fractaljob.name"];
    this.title.textContent = `${name ? name + " · " : ""}${row.labels.size || ""} ${row.state}`;
    if (row.previews > this.drawn && !this.fetching) await this.fetchPieces();
    if (row.state === "succeeded" && !this.finished) this.finish(row, images);
    else if (["failed", "cancelled"].includes(row.state)) {
      this.canvas.dataset.state = row.state;
      this.note.textContent = row.reason || row.state;
    }
  }

  async fetchPieces() {
    this.fetching = true;
    const jobId = this.jobId;
    try {
      const response = await fetch(`/api/jobs/${encodeURIComponent(jobId)}/preview?since=${this.drawn}`);
      if (!response.ok || jobId !== this.jobId) return;
      const body = await response.json();
      if (!body.size) return;
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
        if (jobId !== this.jobId) return;
        const [first, last] = piece.rows;
        g.drawImage(image, 0, first, width, last - first);
        this.filled += last - first;
      }
      this.drawn = body.next;
      this.canvas.dataset.filled = String(this.filled);
      this.canvas.dataset.state = this.filled >= height ? "whole" : "partial";
    } finally {
      this.fetching = false;
    }
  }

  finish(row, images) {
    this.finished = true;
    if (images) {
      const url = `/api/jobs/${encodeURIComponent(row.id)}/image.png`;
      this.image.onload = () => { this.image.hidden = false; this.canvas.dataset.state = "image"; };
      this.image.src = url;
      this.download.href = url;
      this.download.download = `${row.labels["fractaljob.name"] || row.labels.fractal || "fractal"}-${row.id.slice(0, 8)}.png`;
      this.download.hidden = false;
      this.note.textContent = "";
    } else {
      this.note.textContent = row.url
        ? `Finished. The image is in storage at ${row.url} (this coordinator reads no storage: start it with --storage to show it here).`
        : "Finished.";
    }
  }
}
