// @ts-check
// The editor's commands and its one keymap. Every keyboard shortcut is a command registered here and
// dispatched by one window keydown listener; what litegraph's canvas does by itself (copy, paste, delete,
// mouse gestures) is registered too, without `run`, so that the help overlay lists everything from here.
import { isTyping } from "./dom.js";

/**
 * @typedef {object} Command
 * @property {string} id unique, "area.verb": "workflow.queue", "history.undo"
 * @property {string} label what it does, as the help says it
 * @property {string} section the help's heading it shows under (SECTIONS)
 * @property {string[]} [keys] key chords: "Mod+Enter", "Mod+Shift+Z", "?", "F1", "Escape". Mod is Ctrl, or
 *   Cmd on a Mac; letters are case-blind; Shift is implied by a typed symbol ("?").
 * @property {string} [gesture] a mouse gesture the help shows instead of (or before) the keys: "Wheel"
 * @property {(event?: KeyboardEvent) => unknown} [run] absent: litegraph's canvas (or a focused widget)
 *   does it itself; the command is listed for the help and never dispatched
 * @property {() => boolean} [when] the keys act only while this is true (Esc closes the help while it is open)
 * @property {boolean} [whileTyping] the keys act in text fields too; a chord that types a character ("?")
 *   never does
 */

/** The help's headings, in order. */
export const SECTIONS = ["Workflow", "Edit", "Canvas", "Help"];

/** @type {Map<string, Command>} by id, in registration order (the first one enabled for a chord wins) */
const commands = new Map();
/** @type {Map<Command, string[]>} each command's keys as canonical chords */
const chords = new Map();
let installed = false;

/** "Mod+Alt+Shift+key", the key lower-cased when it is one character; Shift left out for typed symbols. */
function canonical(mod, alt, shift, key) {
  const single = key.length === 1;
  const symbol = single && key.toLowerCase() === key.toUpperCase() && key !== " ";
  return [mod && "Mod", alt && "Alt", shift && !symbol && "Shift", single ? key.toLowerCase() : key]
    .filter(Boolean).join("+");
}

/** The canonical chord of a binding written as "Mod+Shift+Z". */
function parseChord(text) {
  const parts = text.split("+");
  const key = parts.pop() || "+";
  const has = (name) => parts.includes(name);
  for (const part of parts) {
    if (!["Mod", "Alt", "Shift"].includes(part)) throw new Error(`unknown modifier ${part} in the key chord ${text}`);
  }
  return canonical(has("Mod"), has("Alt"), has("Shift"), key);
}

/** The canonical chord of a key event. */
export function eventChord(event) {
  return canonical(event.ctrlKey || event.metaKey, event.altKey, event.shiftKey, event.key);
}

/** A chord as the help shows it: "Ctrl+Shift+Z", "Esc". */
export function chordLabel(text) {
  return text.split("+").map((part) => {
    if (part === "Mod") return "Ctrl";
    if (part === "Escape") return "Esc";
    return part.length === 1 ? part.toUpperCase() : part;
  }).join("+");
}

/** What the help shows in a command's key column: its gesture and/or its chords. */
export function keysLabel(command) {
  return [command.gesture, ...(command.keys || []).map(chordLabel)].filter(Boolean).join(" / ");
}

/**
 * Register a command (once per id; a second registration of an id throws).
 * @param {Command} command
 * @returns {Command}
 */
export function registerCommand(command) {
  if (commands.has(command.id)) throw new Error(`command ${command.id} is registered twice`);
  if (!SECTIONS.includes(command.section)) throw new Error(`command ${command.id}: unknown section ${command.section}`);
  commands.set(command.id, command);
  chords.set(command, (command.keys || []).map(parseChord));
  return command;
}

/** The registered commands, in registration order. */
export function listCommands() {
  return [...commands.values()];
}

/** Run the command `id`; throws when none is registered or it has no `run` (litegraph does it). */
export function runCommand(id) {
  const command = commands.get(id);
  if (!command?.run) throw new Error(`no command ${id} to run`);
  return command.run();
}

/**
 * Make `button` run command `id` on click, with the command's label and keys as its tooltip.
 * @param {HTMLElement} button @param {string} id
 */
export function bindButton(button, id) {
  const command = commands.get(id);
  if (!command) throw new Error(`no command ${id} for the button #${button.id}`);
  const keys = keysLabel(command);
  button.title = keys ? `${command.label} (${keys})` : command.label;
  button.addEventListener("click", () => runCommand(id));
}

/** The command a key event runs, or undefined. */
function commandFor(event) {
  const chord = eventChord(event);
  const typing = isTyping(event.target);
  const typesCharacter = event.key.length === 1 && !event.ctrlKey && !event.metaKey;
  for (const command of commands.values()) {
    if (!command.run || !chords.get(command)?.includes(chord)) continue;
    if (typing && (!command.whileTyping || typesCharacter)) continue;
    if (command.when && !command.when()) continue;
    return command;
  }
  return undefined;
}

/** @param {KeyboardEvent} event */
function onKeyDown(event) {
  const command = commandFor(event);
  if (!command) return;
  event.preventDefault();
  command.run?.(event);
}

/**
 * Install the one keymap: a keydown listener on window, in the bubble phase, so that focused widgets
 * (the prompt text box, litegraph's dialogs and its canvas' own keys) handle their keys first.
 */
export function installKeymap() {
  if (installed) return;
  installed = true;
  window.addEventListener("keydown", onKeyDown);
}
