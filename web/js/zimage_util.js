// Pure helpers of the Z-Image editor extension (no DOM, no ComfyUI imports), so that plain Node can test them.
// ComfyUI loads every .js file under web/ as a module; this one only exports.

export const CUSTOM = "custom";
export const SIZE_STEP = 16;
export const MIN_SIZE = 16;
export const MAX_SIZE = 4096;

// Node colours per category of the pack (title bar colour, body colour), in the muted tones of LiteGraph's
// own palette so that they work with the dark and the light theme.
export const CATEGORY_STYLES = {
  loaders: { color: "#2a363b", bgcolor: "#3f5159", badge: "#4d6f7d" },       // pale blue
  conditioning: { color: "#232", bgcolor: "#353", badge: "#4a7a4a" },           // green
  sampling: { color: "#323", bgcolor: "#535", badge: "#7a4a7a" },               // purple
  latent: { color: "#233", bgcolor: "#355", badge: "#4a7a7a" },                 // cyan
  vae: { color: "#223", bgcolor: "#335", badge: "#4a4a8a" },                    // blue
  lora: { color: "#432", bgcolor: "#653", badge: "#8a6a3a" },                   // amber
  adaln: { color: "#432", bgcolor: "#653", badge: "#8a6a3a" },                  // amber (model patches)
  controlnet: { color: "#322", bgcolor: "#533", badge: "#8a4a4a" },             // red
};

/** [width, height] of a preset such as "1216x832 (3:2)", or null ("custom", anything else). */
export function parsePreset(name) {
  const m = /^\s*(\d+)\s*[x×]\s*(\d+)/.exec(String(name ?? ""));
  if (!m) return null;
  const w = Number(m[1]);
  const h = Number(m[2]);
  return w > 0 && h > 0 ? [w, h] : null;
}

/** The nearest multiple of `step` to `value`, clamped to [min, max] (themselves rounded onto the grid). */
export function snapSize(value, { step = SIZE_STEP, min = MIN_SIZE, max = MAX_SIZE } = {}) {
  step = Number(step) > 0 ? Number(step) : SIZE_STEP;
  const lo = Math.ceil((Number.isFinite(Number(min)) ? Number(min) : MIN_SIZE) / step) * step;
  const hi = Math.floor((Number.isFinite(Number(max)) ? Number(max) : MAX_SIZE) / step) * step;
  let v = Number(value);
  if (!Number.isFinite(v)) v = lo;
  v = Math.round(v / step) * step;
  return Math.min(Math.max(v, lo), hi);
}

/** The first preset in `values` whose size is exactly width x height, else "custom" (when offered). */
export function matchPreset(values, width, height) {
  const list = Array.isArray(values) ? values : [];
  for (const v of list) {
    const s = parsePreset(v);
    if (s && s[0] === Number(width) && s[1] === Number(height)) return v;
  }
  return list.includes(CUSTOM) || list.length === 0 ? CUSTOM : list[0];
}

/** Style for a category such as "Z-Image/loaders" (case-insensitive last part), or null. */
export function categoryStyle(category) {
  const parts = String(category ?? "").split("/");
  if (parts.length < 2 || parts[0] !== "Z-Image") return null;
  return CATEGORY_STYLES[parts[parts.length - 1].toLowerCase()] ?? null;
}

/** The pack's folder name from this module's URL: /extensions/<pack>/js/zimage.js -> <pack>. */
export function packNameFromUrl(url) {
  try {
    const parts = new URL(url).pathname.split("/");
    const i = parts.indexOf("extensions");
    return i >= 0 && parts[i + 1] ? decodeURIComponent(parts[i + 1]) : null;
  } catch (e) {
    return null;
  }
}

/** Is this node definition (from /object_info) one of the pack's? Its python_module is custom_nodes.<pack>
 * (when this module knows <pack> from its URL), or its name starts with "ZImage" and its category with
 * "Z-Image/" (the pack's naming; also right when the folder is served under another name). */
export function isPackNode(nodeData, packName) {
  if (!nodeData || typeof nodeData.name !== "string") return false;
  const mod = typeof nodeData.python_module === "string" ? nodeData.python_module : "";
  if (packName && (mod === `custom_nodes.${packName}` || mod.startsWith(`custom_nodes.${packName}.`))) return true;
  return nodeData.name.startsWith("ZImage") && String(nodeData.category ?? "").startsWith("Z-Image/");
}

/** Text of an onExecuted message's `text` field (a list of strings, or a string). */
export function messageText(text) {
  if (text == null) return null;
  if (Array.isArray(text)) return text.map((t) => (Array.isArray(t) ? t.join("") : String(t ?? ""))).join("\n\n");
  return String(text);
}
