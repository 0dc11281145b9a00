// Small DOM helpers shared by the page's modules.

/** The element with this id. */
export const $ = (id) => document.getElementById(id);

/** A new element with these properties (className, textContent, src, ...) and children. */
export function h(tag, props = {}, ...children) {
  const node = Object.assign(document.createElement(tag), props);
  node.append(...children);
  return node;
}

/** An image file (dropped, pasted or chosen) as a data URL; null for anything that is not an image. */
export function imageFileUrl(file) {
  if (!file || !file.type.startsWith("image/")) return Promise.resolve(null);
  return new Promise((resolve, reject) => {
    const reader = new FileReader();
    reader.onload = () => resolve(reader.result);
    reader.onerror = () => reject(reader.error);
    reader.readAsDataURL(file);
  });
}

/** Replace a select's options with [value, label] pairs, keeping its choice when it is still offered. */
export function fillSelect(select, choices) {
  const keep = select.value;
  select.replaceChildren(...choices.map(([value, label]) => new Option(label, value)));
  if (choices.some(([value]) => value === keep)) select.value = keep;
}
