// How times, durations, prices and statuses read on the page (as `dstack ps` writes them).

const FINISHED = new Set(["done", "failed", "terminated", "aborted"]);

export function isFinished(status) {
  return FINISHED.has(status);
}

export function ago(timestamp, now = Date.now() / 1000) {
  const seconds = Math.max(0, Math.floor(now - timestamp));
  if (seconds < 60) return seconds ? `${seconds} sec ago` : "now";
  if (seconds < 3600) return `${Math.floor(seconds / 60)} min ago`;
  if (seconds < 86400) {
    const hours = Math.floor(seconds / 3600);
    return `${hours} hour${hours >= 2 ? "s" : ""} ago`;
  }
  return dateTime(timestamp);
}

export function dateTime(timestamp) {
  const d = new Date(timestamp * 1000);
  const pad = (n) => String(n).padStart(2, "0");
  return `${d.getFullYear()}-${pad(d.getMonth() + 1)}-${pad(d.getDate())} ${pad(d.getHours())}:${pad(d.getMinutes())}:${pad(d.getSeconds())}`;
}

export function duration(seconds) {
  if (seconds === null || seconds === undefined || !Number.isFinite(seconds)) return "-";
  const s = Math.max(0, Math.floor(seconds));
  if (s < 60) return `${s}s`;
  if (s < 3600) return `${Math.floor(s / 60)}m ${s % 60}s`;
  if (s < 86400) return `${Math.floor(s / 3600)}h ${Math.floor((s % 3600) / 60)}m`;
  return `${Math.floor(s / 86400)}d ${Math.floor((s % 86400) / 3600)}h`;
}

/** How long a run has been going (or went): from its submission to its end, or to now. */
export function runDuration(run, now = Date.now() / 1000) {
  return duration((run.finished_at ?? now) - run.submitted_at);
}

export function price(value) {
  if (value === null || value === undefined) return "-";
  return `$${Number(value).toString()}`;
}

export function statusText(run) {
  if (run.status === "failed" && run.exit_code) return `failed (${run.exit_code})`;
  return run.status;
}

/** Why a run ended, or what it waits for (ps -v's ERROR column). */
export function reasonText(run) {
  if (run.status === "done") return "";
  return run.termination_message || run.status_message || "";
}

export function bytes(size) {
  const units = ["B", "KB", "MB", "GB", "TB"];
  let value = size;
  let unit = 0;
  while (value >= 1024 && unit < units.length - 1) {
    value /= 1024;
    unit += 1;
  }
  return unit === 0 ? `${value} B` : `${value.toFixed(1)} ${units[unit]}`;
}
