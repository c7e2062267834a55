// Z-Image editor extension for ComfyUI's frontend.
//
// - ZImagePromptEnhancer: shows the enhanced prompt on the node after it ran (read-only text box); the text
//   is kept in the node's properties, so it comes back when the workflow is reopened. It is never a widget
//   value: widgets_values and the queued prompt stay exactly what the Python node declares.
// - ZImageEmptyLatent: choosing a resolution preset sets width/height to it; editing width/height snaps them
//   to a multiple of 16 and sets the preset to the matching one (or "custom"); a button swaps orientation.
// - Every node of the pack gets a colour per category (only as a class default, so colours a user picked
//   and saved win) and a small "Z-Image" badge.
//
// Served by ComfyUI as /extensions/<pack folder>/js/zimage.js, hence "../../../scripts/app.js".
// No network, no external libraries; every hook is guarded and logs a console warning instead of throwing.
import { app } from "../../../scripts/app.js";
import {
  categoryStyle, isPackNode, matchPreset, messageText, packNameFromUrl, parsePreset, snapSize,
} from "./zimage_util.js";

const EXTENSION_NAME = "ZImage.Editor";
const PACK = packNameFromUrl(import.meta.url);
const LOG_PREFIX = "[Z-Image]";

// Prompt enhancer display
const ENHANCED_WIDGET = "zimage_enhanced_prompt";   // not an input name of the node, never serialised
const ENHANCED_PROPERTY = "zimage_enhanced_prompt"; // node.properties key (saved with the workflow)
// Empty latent
const SWAP_WIDGET = "⇄ swap width / height";

function warn(...args) {
  console.warn(LOG_PREFIX, ...args);
}

function findWidget(node, name) {
  return Array.isArray(node?.widgets) ? node.widgets.find((w) => w && w.name === name) : undefined;
}

/** Replace obj[method] by a function calling the original first, then `fn` (errors in `fn` are logged). */
function chainMethod(obj, method, fn, what) {
  const original = obj[method];
  obj[method] = function (...args) {
    const result = typeof original === "function" ? original.apply(this, args) : undefined;
    try {
      fn.apply(this, args);
    } catch (e) {
      warn(`${what} failed:`, e);
    }
    return result;
  };
}

/** A widget that is shown but never written to widgets_values (workflow) nor to the queued prompt. */
function markNotSerialised(widget) {
  widget.serialize = false;
  widget.options = widget.options ?? {};
  widget.options.serialize = false;
}

function redraw(node) {
  (node.graph ?? app.graph)?.setDirtyCanvas?.(true, true);
}

function growToFit(node) {
  try {
    const size = node.computeSize?.();
    if (Array.isArray(size) && Array.isArray(node.size)) {
      const w = Math.max(size[0], node.size[0]);
      const h = Math.max(size[1], node.size[1]);
      if (w !== node.size[0] || h !== node.size[1]) node.setSize?.([w, h]);
    }
  } catch (e) {
    warn("could not resize the node:", e);
  }
}

// ------------------------------------------------------------------------------------------ colours, badge

function applyStyle(nodeType, nodeData) {
  const style = categoryStyle(nodeData.category);
  if (!style) return;
  // Class defaults: LiteGraph draws `this.color || this.constructor.color`, and serialises only the
  // instance's own colours, so a colour a user set (and saved) always wins and nothing extra is saved.
  if (!nodeType.color) nodeType.color = style.color;
  if (!nodeType.bgcolor) nodeType.bgcolor = style.bgcolor;

  const Badge = window.LGraphBadge;
  if (typeof Badge !== "function") return;
  let badge = null;
  const getBadge = () => {
    badge = badge ?? new Badge({ text: "Z-Image", fgColor: "#f0f0f0", bgColor: style.badge });
    return badge;
  };
  chainMethod(nodeType.prototype, "onNodeCreated", function () {
    if (Array.isArray(this.badges)) this.badges.push(getBadge);
  }, `${nodeData.name}: badge`);
}

// ------------------------------------------------------------------------------------------ prompt enhancer

function makeTextDisplay(node) {
  let widget = null;
  const ComfyWidgets = window.comfyAPI?.widgets?.ComfyWidgets;
  if (typeof ComfyWidgets?.STRING === "function") {
    widget = ComfyWidgets.STRING(node, ENHANCED_WIDGET, ["STRING", { multiline: true }], app)?.widget ?? null;
  }
  if (!widget && typeof node.addWidget === "function") {  // older / different frontends: a plain text widget
    widget = node.addWidget("text", ENHANCED_WIDGET, "", () => {}, {});
  }
  if (!widget) return null;
  markNotSerialised(widget);
  widget.label = "enhanced prompt";
  const el = widget.inputEl ?? widget.element;
  if (el) {
    el.readOnly = true;
    el.style.opacity = "0.8";
    el.title = "The prompt written by the enhancer in the last run (read-only; it feeds the enhanced_prompt output).";
  }
  return widget;
}

function showEnhancedPrompt(node, text) {
  if (typeof text !== "string") return;
  let widget = findWidget(node, ENHANCED_WIDGET);
  if (!widget) {
    widget = makeTextDisplay(node);
    if (!widget) {
      warn("ZImagePromptEnhancer: cannot add a text display to the node");
      return;
    }
  }
  widget.value = text;
  const el = widget.inputEl ?? widget.element;
  if (el && "value" in el && el.value !== text) el.value = text;
  node.properties = node.properties ?? {};
  node.properties[ENHANCED_PROPERTY] = text;
  growToFit(node);
  redraw(node);
}

function setupPromptEnhancer(nodeType) {
  chainMethod(nodeType.prototype, "onExecuted", function (message) {
    const text = messageText(message?.text);
    if (text != null) showEnhancedPrompt(this, text);
  }, "ZImagePromptEnhancer: show the enhanced prompt");
  chainMethod(nodeType.prototype, "onConfigure", function (info) {
    const saved = info?.properties?.[ENHANCED_PROPERTY] ?? this.properties?.[ENHANCED_PROPERTY];
    if (typeof saved === "string" && saved) showEnhancedPrompt(this, saved);
  }, "ZImagePromptEnhancer: restore the enhanced prompt");
}

// ------------------------------------------------------------------------------------------ empty latent

function comboValues(widget) {
  let values = widget?.options?.values;
  if (typeof values === "function") {
    try {
      values = values();
    } catch (e) {
      values = null;
    }
  }
  return Array.isArray(values) ? values : [];
}

function sizeLimits(widget) {
  const o = widget?.options ?? {};
  // ComfyUI keeps the real step in step2 (LiteGraph's `step` is 10x it for historical reasons).
  const step = Number(o.step2) > 0 ? Number(o.step2) : 16;
  return { step: Math.max(step, 16), min: o.min ?? 16, max: o.max ?? 4096 };
}

function setupEmptyLatent(node) {
  const resolution = findWidget(node, "resolution");
  const width = findWidget(node, "width");
  const height = findWidget(node, "height");
  if (!resolution || !width || !height) {
    warn("ZImageEmptyLatent: resolution/width/height widget missing; the preset picker is off for node", node.id);
    return;
  }
  let busy = false;  // our own updates must not re-trigger the handlers

  const setWidget = (widget, value) => {
    if (widget.value !== value) widget.value = value;
  };
  const syncPreset = () => {
    const values = comboValues(resolution);
    const match = matchPreset(values, Number(width.value), Number(height.value));
    if (values.includes(match)) setWidget(resolution, match);
  };

  chainMethod(resolution, "callback", function (value) {
    if (busy) return;
    const size = parsePreset(value ?? resolution.value);
    if (!size) return;  // "custom": keep width/height as they are
    busy = true;
    try {
      setWidget(width, snapSize(size[0], sizeLimits(width)));
      setWidget(height, snapSize(size[1], sizeLimits(height)));
    } finally {
      busy = false;
    }
    redraw(node);
  }, "ZImageEmptyLatent: apply the preset");

  for (const widget of [width, height]) {
    chainMethod(widget, "callback", function () {
      if (busy) return;
      busy = true;
      try {
        setWidget(widget, snapSize(widget.value, sizeLimits(widget)));
        syncPreset();
      } finally {
        busy = false;
      }
      redraw(node);
    }, `ZImageEmptyLatent: snap ${widget.name}`);
  }

  if (typeof node.addWidget === "function" && !findWidget(node, SWAP_WIDGET)) {
    const button = node.addWidget("button", SWAP_WIDGET, null, () => {
      try {
        busy = true;
        const w = Number(width.value);
        setWidget(width, snapSize(height.value, sizeLimits(width)));
        setWidget(height, snapSize(w, sizeLimits(height)));
        syncPreset();
      } catch (e) {
        warn("ZImageEmptyLatent: swap failed:", e);
      } finally {
        busy = false;
      }
      redraw(node);
    }, { serialize: false });
    if (button) markNotSerialised(button);
  }
}

// ------------------------------------------------------------------------------------------ registration

const extension = {
  name: EXTENSION_NAME,

  async beforeRegisterNodeDef(nodeType, nodeData) {
    try {
      if (!isPackNode(nodeData, PACK)) return;
      applyStyle(nodeType, nodeData);
      if (nodeData.name === "ZImagePromptEnhancer") {
        setupPromptEnhancer(nodeType);
      } else if (nodeData.name === "ZImageEmptyLatent") {
        chainMethod(nodeType.prototype, "onNodeCreated", function () {
          setupEmptyLatent(this);
        }, "ZImageEmptyLatent: preset picker");
      }
    } catch (e) {
      warn(`setting up ${nodeData?.name} failed:`, e);
    }
  },
};

// The same file served twice (e.g. under two folder names) must not register twice.
if (!(app?.extensions ?? []).some((e) => e?.name === EXTENSION_NAME)) {
  try {
    app.registerExtension(extension);
  } catch (e) {
    warn("could not register the editor extension:", e);
  }
}
