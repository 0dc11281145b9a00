// IP-Adapter on the page: reference images, each with an IP-Adapter from GET /api/v1/ip-adapters
// (the usable ones) and a weight. readIpAdapterFields() adds the units that have an image to the
// request's `ip_adapter`.

import { api } from "./api.js";
import { fillSelect } from "./dom.js";
import { UnitList } from "./units.js";

let names = []; // the usable IP-Adapters

const units = new UnitList({
  field: "ip_adapter",
  title: "IP-Adapter unit",
  ids: ["ip-section", "ip-units", "ip-add", "ip-unit-template"],
  setup: (unit) => fillSelect(units.control(unit, "name"), names.map((name) => [name, name])),
});

/** Fill each unit's choice; the section says so when the server has no usable IP-Adapter. */
export async function loadIpAdapters() {
  const { data } = await api("/api/v1/ip-adapters");
  names = data.ip_adapters.filter((a) => a.usable).map((a) => a.name);
  units.offer(data.max_ip_adapters, names.length > 0, `none usable in IP_ADAPTER_DIR (${data.ip_adapter_dir})`);
  for (const unit of units.units()) units.setup(unit);
}

/** The request's `ip_adapter`: the units that have a reference image and an IP-Adapter. */
export function readIpAdapterFields() {
  const chosen = units.sent((unit) => units.image(unit) && units.control(unit, "name").value);
  if (!chosen.length) return {};
  return {
    ip_adapter: chosen.map((unit) => ({
      name: units.control(unit, "name").value, image: units.image(unit), weight: Number(units.control(unit, "weight").value),
    })),
  };
}
