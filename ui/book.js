// An order book from level2_batch: a `snapshot`, then `l2update`s whose sizes are
// absolute ("0" removes the level). Never crossed, by construction: a level set on
// one side removes the other side's levels at or through its price, since the
// newer change wins (a batch may carry the two halves of a move in either order).

export class Book {
  constructor() {
    this.clear();
  }

  clear() {
    this.bids = new Map(); // price (number) -> [price text, size (number)]
    this.asks = new Map();
    this.ready = false; // a snapshot has come
    this.version = 0; // rises on every change, so the view knows to redraw
  }

  snapshot(msg) {
    this.clear();
    for (const [p, s] of msg.bids || []) this.set("buy", p, s);
    for (const [p, s] of msg.asks || []) this.set("sell", p, s);
    this.ready = true;
    this.version++;
  }

  update(msg) {
    if (!this.ready) return; // updates before a snapshot mean nothing
    for (const [side, p, s] of msg.changes || []) this.set(side, p, s);
    this.version++;
  }

  set(side, priceText, sizeText) {
    const price = Number(priceText);
    const size = Number(sizeText);
    if (!Number.isFinite(price) || !Number.isFinite(size)) return;
    const [mine, theirs] = side === "buy" ? [this.bids, this.asks] : [this.asks, this.bids];
    if (size <= 0) {
      mine.delete(price);
      return;
    }
    mine.set(price, [priceText, size]);
    for (const q of theirs.keys()) {
      if (side === "buy" ? q <= price : q >= price) theirs.delete(q);
    }
  }

  // The best `n` levels of each side: bids high to low, asks low to high.
  top(n) {
    const pick = (map, dir) => {
      const keys = [...map.keys()].sort((a, b) => dir * (a - b)).slice(0, n);
      return keys.map((k) => ({ price: k, text: map.get(k)[0], size: map.get(k)[1] }));
    };
    return { bids: pick(this.bids, -1), asks: pick(this.asks, 1) };
  }
}
