// A list of repeated units in the form (ControlNet units, IP-Adapter reference images): each a
// copy of a <template>, added up to the server's limit and removed, with its image (chosen or
// dropped) and its weight shown beside the slider. The units sent are named by their place in
// the request's list, as the server names them in an error (`controlnet[1].weight`, which
// feedback.js shows in that unit).

import { $, imageFileUrl } from "./dom.js";

export class UnitList {
  /**
   * `field`: the request's list (`controlnet`); `title`: a unit's legend ("ControlNet unit");
   * `ids`: the element ids of the section (a <details>), the list, the add button and the template;
   * `setup(unit)`: wires a new unit; `onImage(unit)`: called when its image changes.
   */
  constructor({ field, title, ids, setup = () => {}, onImage = () => {} }) {
    Object.assign(this, { field, title, setup, onImage, max: 0 });
    [this.section, this.list, this.addButton, this.template] = ids.map($);
    this.images = new WeakMap(); // unit -> its image as a data URL
    this.addButton.addEventListener("click", () => this.add()?.querySelector("[data-key]")?.focus());
  }

  /** The units in the request's order. */
  units() {
    return [...this.list.children];
  }

  /** A new unit at the end (null when the limit is reached). */
  add() {
    if (this.units().length >= this.max) return null;
    const unit = this.template.content.firstElementChild.cloneNode(true);
    this.list.append(unit);
    this.wire(unit);
    this.setup(unit);
    this.renumber();
    return unit;
  }

  wire(unit) {
    const file = this.control(unit, "image");
    const take = async (chosen) => {
      const url = await imageFileUrl(chosen);
      if (!url) return;
      this.images.set(unit, url);
      const shown = unit.querySelector("[data-source]");
      shown.src = url;
      shown.hidden = false;
      this.onImage(unit);
    };
    file.addEventListener("change", () => take(file.files[0]));
    unit.addEventListener("dragover", (event) => event.preventDefault());
    unit.addEventListener("drop", (event) => {
      event.preventDefault();
      take(event.dataTransfer.files[0]);
    });
    for (const shows of unit.querySelectorAll("output[data-shows]")) {
      const input = this.control(unit, shows.dataset.shows);
      input.addEventListener("input", () => { shows.textContent = input.value; });
    }
    unit.querySelector("[data-remove]").addEventListener("click", () => {
      unit.remove();
      this.renumber();
      this.addButton.focus();
    });
  }

  /**
   * The units that go in the request (those `ready` says have what they need), their controls
   * named by their place in it (`controlnet[0].weight`), so the server's errors find them.
   */
  sent(ready) {
    const chosen = this.units().filter(ready);
    for (const unit of this.units()) {
      const index = chosen.indexOf(unit);
      for (const control of unit.querySelectorAll("[data-key]")) {
        if (index < 0) control.removeAttribute("name");
        else control.name = `${this.field}[${index}].${control.dataset.key}`;
      }
    }
    return chosen;
  }

  /** The unit's control for a request field (`weight`, `model`, ...). */
  control(unit, key) {
    return unit.querySelector(`[data-key="${key}"]`);
  }

  /** The unit's image as a data URL (undefined until one is chosen). */
  image(unit) {
    return this.images.get(unit);
  }

  /**
   * The server's limit and whether it has anything to offer: the section says so when it has
   * none, and starts with one empty unit the first time it has.
   */
  offer(max, usable, none) {
    this.max = usable ? max : 0;
    while (this.units().length > this.max) this.units().at(-1).remove();
    if (usable && !this.offered) this.add();
    this.offered ||= usable;
    this.section.querySelector("summary .hint").textContent = usable ? "" : `· ${none}`;
    this.renumber();
  }

  /** Legends, ids and labels after units came or went (call again when controls are added). */
  renumber() {
    this.units().forEach((unit, index) => {
      const prefix = `${this.field}-${index}`;
      unit.querySelector("legend").textContent = `${this.title} ${index + 1}`;
      for (const control of unit.querySelectorAll("[data-key]")) control.id = `${prefix}-${control.dataset.key}`;
      for (const label of unit.querySelectorAll("label[data-for]")) label.htmlFor = `${prefix}-${label.dataset.for}`;
      for (const shows of unit.querySelectorAll("output[data-shows]")) shows.htmlFor = `${prefix}-${shows.dataset.shows}`;
      unit.querySelector("[data-remove]").setAttribute("aria-label", `Remove ${this.title} ${index + 1}`);
    });
    this.addButton.hidden = this.max === 0;
    this.addButton.disabled = this.units().length >= this.max;
  }
}
