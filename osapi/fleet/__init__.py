"""The fleet: enrolled hosts and the NATS credentials that limit them (README.md, "Fleet hosts").

``auth.py``      each host's nats-server user and permissions, rendered into an
                 include file of the node's nats-server configuration
``hosts.py``     the enrollment bucket (``<job.kv_bucket>-fleet``): enroll, list, revoke;
                 the host's durable consumer, filtered on its enrolled labels
``renderer.py``  the control-plane task that keeps every node's include file equal
                 to the bucket and makes its nats-server reload it
``bundle.py``    a host's complete ``osapi.yaml``
``bcrypt.py``    bcrypt in pure Python: the password hashes of the users file
"""
