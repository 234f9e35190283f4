"""The cloud's one runtime layer: MQTT (mqtt: client from a URL; consumer: manual-ack shared-subscription
consumer with leave(); publisher: QoS 1 with each message's PUBACK reason code), owned threads
(threads) and the owner of database connections (db)."""
