import json, sys, numpy as np
recs = json.load(open(sys.argv[1]))
absent = [r for r in recs if r["kind"] == "absent"]
def score(r, bias=None):
    m = np.log(np.clip(np.array(r["mass"]), 1e-12, None))  # L,H,D
    ln = np.log(np.array(r["lengths"])); m = m - ln.mean()  # exponent 0 relative form (constant per prompt)
    if bias is not None:
        m = m - bias(np.array(r["pos"]))
    return m
# bias per (L,H) from absent: gaussian kernel over positions
P = np.concatenate([r["pos"] for r in absent]); S = np.concatenate([score(r) for r in absent], axis=2)  # L,H,N
def bias(pos):
    w = np.exp(-0.5 * ((pos[:, None] - P[None]) / 0.08) ** 2)  # D,N
    return (S @ w.T) / w.sum(1)  # L,H,D
for kind in ("paraphrase", "name"):
    items = [r for r in recs if r["kind"] == kind]
    half = len(items) // 2
    dev, test = items[:half], items[half:]
    def hits(rs, cal):
        return np.mean([ (score(r, bias if cal else None).argmax(axis=2) == r["gold"]) for r in rs], axis=0)  # L,H
    for cal in (False, True):
        hd, ht = hits(dev, cal), hits(test, cal)
        L, H = hd.shape
        best = np.unravel_index(hd.argmax(), hd.shape)
        order = np.argsort(-hd.ravel())
        # ensemble of top-k heads chosen on dev
        for k in (1, 3, 5, 10):
            sel = order[:k]
            def ens(rs):
                out = []
                for r in rs:
                    s = score(r, bias if cal else None).reshape(L * H, -1)[sel].mean(0)
                    out.append(s.argmax() == r["gold"])
                return np.mean(out)
            print(kind, "cal" if cal else "raw", f"top{k} heads dev {ens(dev):.2f} test {ens(test):.2f}", [divmod(int(x), H) for x in sel[:k]])
        print(kind, "cal" if cal else "raw", "best single dev", hd.max(), "its test", ht[best], "max test any", ht.max(), "n", len(dev), len(test))
