"""Datastores that deliver ``base.Snapshot`` values: ``etcd.EtcdSyncer`` (real) and
``memory.MemoryDatastore`` (tests, labs). ``keys`` holds Calico's etcd key layout."""
