import sys, time
sys.path.insert(0, "/tmp/rv"); from r import C
a, b = C(7711), C(7711)
def flood(n, pre):
    for i in range(n): b.cmd("SET", f"{pre}{i}", "x"*2000)
# absent key, set, evicted
for trial in range(3):
    a.cmd("WATCH", "{e}k")
    b.cmd("SET", "{e}k", "v")
    flood(5000, f"f{trial}_")
    print("evicted?", b.cmd("EXISTS", "{e}k"))
    a.cmd("MULTI"); a.cmd("SET","{e}y","1"); print("absent->set->evicted:", a.cmd("EXEC"))
# value evicted
b.cmd("SET","{e}v","1"); a.cmd("WATCH","{e}v"); flood(5000,"g_"); print("exists", b.cmd("EXISTS","{e}v"))
a.cmd("MULTI"); a.cmd("SET","{e}y","1"); print("value->evicted:", a.cmd("EXEC"))
print(b.cmd("INFO","stats"))
