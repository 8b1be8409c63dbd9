// @ts-check
// A small store: one frozen state object, replaced (never mutated) by set(), with subscribers told of
// every change. Maps in a state are replaced too: withEntry / withoutEntry make the changed copies.

/** @template {object} T */
export class Store {
  /** @type {Readonly<T>} */
  #state;
  /** @type {Set<(state: Readonly<T>, previous: Readonly<T>) => void>} */
  #listeners = new Set();

  /** @param {T} initial */
  constructor(initial) {
    this.#state = Object.freeze({ ...initial });
  }

  /** The current state; treat it (and the Maps in it) as read-only. */
  get() {
    return this.#state;
  }

  /**
   * Merge `patch` (or what it returns for the current state) into a new state and tell the subscribers.
   * @param {Partial<T> | ((state: Readonly<T>) => Partial<T>)} patch
   */
  set(patch) {
    const previous = this.#state;
    const changes = typeof patch === "function" ? patch(previous) : patch;
    this.#state = Object.freeze({ ...previous, ...changes });
    for (const listener of this.#listeners) listener(this.#state, previous);
  }

  /**
   * Call `listener(state, previous)` after every set(); returns the function that unsubscribes it.
   * @param {(state: Readonly<T>, previous: Readonly<T>) => void} listener
   * @returns {() => void}
   */
  subscribe(listener) {
    this.#listeners.add(listener);
    return () => { this.#listeners.delete(listener); };
  }
}

/**
 * A copy of `map` with `key` set to `value`.
 * @template K, V
 * @param {ReadonlyMap<K, V>} map @param {K} key @param {V} value
 * @returns {Map<K, V>}
 */
export function withEntry(map, key, value) {
  return new Map(map).set(key, value);
}

/**
 * A copy of `map` without `key`.
 * @template K, V
 * @param {ReadonlyMap<K, V>} map @param {K} key
 * @returns {Map<K, V>}
 */
export function withoutEntry(map, key) {
  const copy = new Map(map);
  copy.delete(key);
  return copy;
}
