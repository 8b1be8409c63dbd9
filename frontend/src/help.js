// @ts-check
// The keyboard and mouse help overlay: toolbar "?" button, "?" or F1 opens it, Esc or a click closes it.
// It lists the command registry (commands.js), so it says what the keymap does.
import { SECTIONS, bindButton, keysLabel, listCommands, registerCommand } from "./commands.js";
import { el } from "./dom.js";

/** @type {HTMLElement | null} */
let overlay = null;

export function closeHelp() {
  overlay?.remove();
  overlay = null;
}

/** The registered commands as table rows, under one heading row per section. */
function rows() {
  const commands = listCommands();
  return SECTIONS.flatMap((section) => {
    const inSection = commands.filter((command) => command.section === section);
    if (!inSection.length) return [];
    return [
      el("tr", { className: "help-section" }, [el("th", { colSpan: 2, text: section })]),
      ...inSection.map((command) => el("tr", {}, [
        el("td", {}, [el("kbd", { text: keysLabel(command) })]),
        el("td", { text: command.label }),
      ])),
    ];
  });
}

export function openHelp() {
  if (overlay) return;
  const card = el("div", { className: "help-card", role: "dialog", "aria-label": "Keyboard shortcuts" }, [
    el("h2", { text: "Keyboard and mouse" }),
    el("table", {}, [el("tbody", {}, rows())]),
    el("p", { text: "Press Esc or click outside to close." }),
  ]);
  const shown = el("div", { id: "help-overlay" }, [card]);
  shown.addEventListener("click", (e) => { if (e.target === shown) closeHelp(); });
  document.body.append(shown);
  overlay = shown;
}

/** Register the help's commands and add its toolbar button. */
export function initHelp() {
  registerCommand({
    id: "help.toggle", label: "Show or hide this help", section: "Help", keys: ["?", "F1"], whileTyping: true,
    run: () => (overlay ? closeHelp() : openHelp()),
  });
  registerCommand({
    id: "help.close", label: "Close this help", section: "Help", keys: ["Escape"], whileTyping: true,
    when: () => overlay !== null, run: closeHelp,
  });
  const button = el("button", { id: "help-button", text: "?" });
  document.getElementById("toolbar")?.append(button);
  bindButton(button, "help.toggle");
}
