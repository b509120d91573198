/**
 * A small SVG line chart (no dependencies): speedup against alpha for each decoder, with the ideal
 * curves dashed.
 */

export interface ChartSeries {
  name: string;
  color: string;
  points: { x: number; y: number }[];
  dashed?: boolean;
  /** Draw markers only (measured points); lines otherwise. */
  markers?: boolean;
  /** Marker shape for measured points. */
  shape?: 'circle' | 'square' | 'diamond';
}

export interface ChartOptions {
  title: string;
  xLabel: string;
  yLabel: string;
  xRange: [number, number];
  yRange: [number, number];
  width?: number;
  height?: number;
  notes?: string[];
}

const esc = (s: string) => s.replace(/&/g, '&amp;').replace(/</g, '&lt;').replace(/>/g, '&gt;');

export function lineChartSvg(series: ChartSeries[], o: ChartOptions): string {
  const W = o.width ?? 860;
  const H = o.height ?? 480;
  const m = { l: 60, r: 290, t: 44, b: 56 + 16 * (o.notes?.length ?? 0) };
  const pw = W - m.l - m.r;
  const ph = H - m.t - m.b;
  const [x0, x1] = o.xRange;
  const [y0, y1] = o.yRange;
  const X = (x: number) => m.l + ((x - x0) / (x1 - x0)) * pw;
  const Y = (y: number) => m.t + ph - ((y - y0) / (y1 - y0)) * ph;
  const out: string[] = [];
  out.push(
    `<svg xmlns="http://www.w3.org/2000/svg" width="${W}" height="${H}" viewBox="0 0 ${W} ${H}" font-family="Helvetica, Arial, sans-serif" font-size="12">`,
    `<rect width="${W}" height="${H}" fill="white"/>`,
    `<text x="${m.l}" y="24" font-size="15" font-weight="bold">${esc(o.title)}</text>`,
  );
  // grid and ticks
  const xStep = niceStep(x1 - x0);
  const yStep = niceStep(y1 - y0);
  for (let x = Math.ceil(x0 / xStep) * xStep; x <= x1 + 1e-9; x += xStep) {
    out.push(
      `<line x1="${X(x).toFixed(1)}" y1="${m.t}" x2="${X(x).toFixed(1)}" y2="${m.t + ph}" stroke="#e5e5e5"/>`,
      `<text x="${X(x).toFixed(1)}" y="${m.t + ph + 16}" text-anchor="middle">${fmt(x)}</text>`,
    );
  }
  for (let y = Math.ceil(y0 / yStep) * yStep; y <= y1 + 1e-9; y += yStep) {
    out.push(
      `<line x1="${m.l}" y1="${Y(y).toFixed(1)}" x2="${m.l + pw}" y2="${Y(y).toFixed(1)}" stroke="#e5e5e5"/>`,
      `<text x="${m.l - 6}" y="${(Y(y) + 4).toFixed(1)}" text-anchor="end">${fmt(y)}</text>`,
    );
  }
  if (y0 <= 1 && y1 >= 1) {
    out.push(
      `<line x1="${m.l}" y1="${Y(1).toFixed(1)}" x2="${m.l + pw}" y2="${Y(1).toFixed(1)}" stroke="#888" stroke-width="1"/>`,
    );
  }
  out.push(
    `<rect x="${m.l}" y="${m.t}" width="${pw}" height="${ph}" fill="none" stroke="#444"/>`,
    `<text x="${m.l + pw / 2}" y="${m.t + ph + 36}" text-anchor="middle">${esc(o.xLabel)}</text>`,
    `<text transform="translate(16 ${m.t + ph / 2}) rotate(-90)" text-anchor="middle">${esc(o.yLabel)}</text>`,
  );
  // series
  series.forEach((s, i) => {
    const pts = s.points.filter((p) => Number.isFinite(p.x) && Number.isFinite(p.y));
    if (!s.markers && pts.length > 1) {
      const d = pts
        .map((p, j) => `${j === 0 ? 'M' : 'L'}${X(p.x).toFixed(1)},${Y(p.y).toFixed(1)}`)
        .join(' ');
      out.push(
        `<path d="${d}" fill="none" stroke="${s.color}" stroke-width="${s.dashed ? 1.5 : 2}"${s.dashed ? ' stroke-dasharray="6 4"' : ''}/>`,
      );
    }
    if (s.markers) {
      for (const p of pts) out.push(marker(s.shape ?? 'circle', X(p.x), Y(p.y), s.color));
      if (pts.length > 1) {
        const d = pts
          .map((p, j) => `${j === 0 ? 'M' : 'L'}${X(p.x).toFixed(1)},${Y(p.y).toFixed(1)}`)
          .join(' ');
        out.push(`<path d="${d}" fill="none" stroke="${s.color}" stroke-width="1.5"/>`);
      }
    }
    // legend
    const ly = m.t + 10 + i * 20;
    const lx = m.l + pw + 14;
    if (s.markers) out.push(marker(s.shape ?? 'circle', lx + 12, ly, s.color));
    else
      out.push(
        `<line x1="${lx}" y1="${ly}" x2="${lx + 24}" y2="${ly}" stroke="${s.color}" stroke-width="2"${s.dashed ? ' stroke-dasharray="6 4"' : ''}/>`,
      );
    out.push(`<text x="${lx + 30}" y="${ly + 4}">${esc(s.name)}</text>`);
  });
  (o.notes ?? []).forEach((n, i) => {
    out.push(`<text x="${m.l}" y="${m.t + ph + 54 + 16 * i}" font-size="11" fill="#444">${esc(n)}</text>`);
  });
  out.push('</svg>');
  return `${out.join('\n')}\n`;
}

function marker(shape: string, x: number, y: number, color: string): string {
  if (shape === 'square')
    return `<rect x="${(x - 4).toFixed(1)}" y="${(y - 4).toFixed(1)}" width="8" height="8" fill="${color}"/>`;
  if (shape === 'diamond')
    return `<path d="M${x.toFixed(1)},${(y - 5).toFixed(1)} L${(x + 5).toFixed(1)},${y.toFixed(1)} L${x.toFixed(1)},${(y + 5).toFixed(1)} L${(x - 5).toFixed(1)},${y.toFixed(1)} Z" fill="${color}"/>`;
  return `<circle cx="${x.toFixed(1)}" cy="${y.toFixed(1)}" r="4" fill="${color}"/>`;
}

function niceStep(span: number): number {
  const raw = span / 6;
  const p = 10 ** Math.floor(Math.log10(raw));
  for (const k of [1, 2, 2.5, 5, 10]) if (raw <= k * p) return k * p;
  return 10 * p;
}

const fmt = (x: number) => String(Math.round(x * 1000) / 1000);
