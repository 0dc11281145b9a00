// Browser storage that never throws: private modes and blocked storage just forget.

function store(which) {
  return {
    get(name) {
      try { return window[which].getItem(name); } catch { return null; }
    },
    /** Store a value; null, undefined or "" removes it. */
    set(name, value) {
      try {
        if (value === null || value === undefined || value === "") window[which].removeItem(name);
        else window[which].setItem(name, String(value));
      } catch { /* no persistence: keep going */ }
    },
  };
}

export const local = store("localStorage");
export const session = store("sessionStorage");
