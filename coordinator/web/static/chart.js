// Throughput and queue depth over the last minutes, drawn on a canvas by hand:
// two lines and their scales are about sixty lines, not worth a library.

const RATE = "#6ea8fe";
const DEPTH = "#e9b949";

function niceMax(value) {
  if (value <= 0) return 1;
  const step = 10 ** Math.floor(Math.log10(value));
  for (const f of [1, 2, 5, 10]) if (f * step >= value) return f * step;
  return 10 * step;
}

export function drawChart(canvas, points) {
  const ratio = window.devicePixelRatio || 1;
  const width = canvas.clientWidth || 640, height = canvas.clientHeight || 200;
  if (canvas.width !== width * ratio) { canvas.width = width * ratio; canvas.height = height * ratio; }
  const g = canvas.getContext("2d");
  g.setTransform(ratio, 0, 0, ratio, 0, 0);
  g.clearRect(0, 0, width, height);
  const left = 44, right = 44, top = 10, bottom = 22;
  const w = width - left - right, h = height - top - bottom;
  g.font = "11px system-ui, sans-serif";
  g.strokeStyle = "#2a2f3c";
  g.fillStyle = "#8a91a3";
  if (points.length < 2) {
    g.fillText("collecting…", left + 8, top + 16);
    return;
  }
  const t0 = points[0][0], t1 = points[points.length - 1][0];
  const span = Math.max(t1 - t0, 1);
  const rateMax = niceMax(Math.max(...points.map((p) => p[1])));
  const depthMax = niceMax(Math.max(...points.map((p) => p[2])));
  for (let i = 0; i <= 4; i++) {
    const y = top + h - (h * i) / 4;
    g.beginPath(); g.moveTo(left, y); g.lineTo(left + w, y); g.stroke();
    g.textAlign = "right"; g.fillStyle = RATE;
    g.fillText(String(+(rateMax * i / 4).toPrecision(3)), left - 4, y + 4);
    g.textAlign = "left"; g.fillStyle = DEPTH;
    g.fillText(String(+(depthMax * i / 4).toPrecision(3)), left + w + 4, y + 4);
  }
  g.fillStyle = "#8a91a3"; g.textAlign = "center";
  const minutes = span / 60;
  g.fillText(minutes >= 1 ? `last ${minutes.toFixed(1)} min` : `last ${Math.round(span)} s`, left + w / 2, height - 6);
  for (const [index, max, colour] of [[2, depthMax, DEPTH], [1, rateMax, RATE]]) {
    g.strokeStyle = colour; g.lineWidth = 1.5; g.beginPath();
    points.forEach((p, i) => {
      const x = left + ((p[0] - t0) / span) * w, y = top + h - (p[index] / max) * h;
      if (i) g.lineTo(x, y); else g.moveTo(x, y);
    });
    g.stroke();
  }
  g.lineWidth = 1;
}
