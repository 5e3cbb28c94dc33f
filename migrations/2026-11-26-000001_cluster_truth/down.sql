DROP TABLE apiservernodes;
DROP TABLE etcdnodes;
DROP TABLE kubeclusters;
