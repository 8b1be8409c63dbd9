// @ts-check
// HTTP and websocket client of the Loom server; the websocket reconnects after a server restart.

/** Server events arrive as DOM events named after the message type, with the data as `detail`. */
export class Api extends EventTarget {
  constructor() {
    super();
    this.clientId = sessionStorage.getItem("loom.clientId") || crypto.randomUUID();
    sessionStorage.setItem("loom.clientId", this.clientId);
    /** @type {WebSocket | null} */
    this.socket = null;
    this.retryMs = 500;
  }

  /**
   * GET or POST JSON; rejects with an Error carrying `status` and the parsed `body`.
   * @param {string} path @param {unknown} [body] POSTed as JSON when given
   * @returns {Promise<any>}
   */
  async json(path, body = undefined) {
    const init = body === undefined ? {} : {
      method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body),
    };
    const response = await fetch(path, init);
    const text = await response.text();
    const data = text ? JSON.parse(text) : null;
    if (!response.ok) {
      const error = new Error(data?.error?.details || data?.error?.message || `${response.status} ${response.statusText}`);
      Object.assign(error, { status: response.status, body: data });
      throw error;
    }
    return data;
  }

  /**
   * Call `listener` with the data (`detail`) of every server event of `type`; also "connected", "disconnected".
   * @param {string} type @param {(detail: any) => void} listener
   */
  on(type, listener) {
    this.addEventListener(type, (event) => listener(/** @type {CustomEvent} */ (event).detail));
  }

  objectInfo() { return this.json("/object_info"); }
  defaultWorkflow() { return this.json("/loom/default-workflow"); }
  /** The API-format prompt of an editor workflow, converted by the server as POST /prompt does. */
  workflowToApi(workflow) { return this.json("/loom/workflow/api", workflow); }
  /** The editor workflow of an API-format prompt, laid out by the server. */
  apiToWorkflow(prompt) { return this.json("/loom/workflow/editor", prompt); }

  /** Queue an editor-format workflow; the server converts it to the API format. */
  queue(workflow) {
    return this.json("/prompt", {
      client_id: this.clientId, prompt: workflow, extra_data: { extra_pnginfo: { workflow } },
    });
  }

  /** URL of an output image, for an `executed` event's image entry. */
  viewUrl(image) {
    const query = new URLSearchParams({
      filename: image.filename, subfolder: image.subfolder || "", type: image.type || "output",
    });
    return `/view?${query}`;
  }

  connect() {
    const scheme = location.protocol === "https:" ? "wss" : "ws";
    const socket = new WebSocket(`${scheme}://${location.host}/ws?clientId=${encodeURIComponent(this.clientId)}`);
    this.socket = socket;
    socket.addEventListener("open", () => {
      this.retryMs = 500;
      this.dispatchEvent(new CustomEvent("connected"));
    });
    socket.addEventListener("message", (event) => {
      if (typeof event.data !== "string") return; // binary preview frames are not shown yet
      const message = JSON.parse(event.data);
      this.dispatchEvent(new CustomEvent(message.type, { detail: message.data }));
    });
    socket.addEventListener("close", () => {
      this.dispatchEvent(new CustomEvent("disconnected"));
      setTimeout(() => this.connect(), this.retryMs);
      this.retryMs = Math.min(this.retryMs * 2, 5000);
    });
  }
}
