"""Synchronous Kafka offset commits through librdkafka (confluent-kafka), one after another:
commits per second and p50/p99 latency (docs/BENCHMARKS.md, issue #21).

    kafka-commit-latency.py BOOTSTRAP COUNT

Creates topic `cb` (1 partition, the broker's default factor) if missing, writes one
record, then commits offset 0 of group `cbg` COUNT times with asynchronous=False.
"""
import sys, time
from confluent_kafka import Consumer, TopicPartition, Producer
from confluent_kafka.admin import AdminClient, NewTopic
boot = sys.argv[1]; n = int(sys.argv[2])
a = AdminClient({"bootstrap.servers": boot})
try:
    a.create_topics([NewTopic("cb", 1)])["cb"].result(30)
except Exception as e:
    pass
time.sleep(2)
p = Producer({"bootstrap.servers": boot}); p.produce("cb", b"x", partition=0); p.flush(10)
c = Consumer({"bootstrap.servers": boot, "group.id": "cbg", "enable.auto.commit": False})
c.assign([TopicPartition("cb", 0, 0)])
# warm up: find coordinator
for _ in range(20):
    try:
        c.commit(offsets=[TopicPartition("cb", 0, 0)], asynchronous=False); break
    except Exception:
        time.sleep(0.5)
lat = []
t0 = time.time()
for i in range(n):
    s = time.perf_counter()
    c.commit(offsets=[TopicPartition("cb", 0, i % 1)], asynchronous=False)
    lat.append(time.perf_counter() - s)
el = time.time() - t0
lat.sort()
print(f"{n} sync commits in {el:.2f} s: {n/el:.0f}/s, p50 {lat[n//2]*1e3:.2f} ms, p99 {lat[int(n*0.99)]*1e3:.2f} ms")
