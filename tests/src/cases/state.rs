//! State persists in the live interpreter: variables, imports, functions, classes,
//! closures, generators, DataFrames.

use biocage_core::SandboxRuntime;

use crate::harness::{ok, run, session};

/// The reference's "State Persistence Example", as written there (indented code).
pub async fn seed_state_persistence(rt: &dyn SandboxRuntime) {
    let s = session(rt).await;
    let setup = run(
        s.as_ref(),
        r#"
    import pandas as pd
    import numpy as np

    # Define helper functions
    def analyze_data(data):
        return {
            'mean': np.mean(data),
            'std': np.std(data),
            'count': len(data)
        }

    # Initialize data
    df = pd.DataFrame({
        'values': np.random.randn(1000),
        'category': np.random.choice(['A', 'B', 'C'], 1000)
    })
    "#,
    )
    .await;
    ok(&setup);
    let r = run(
        s.as_ref(),
        r#"
    # Everything from previous execution is still available
    stats = analyze_data(df['values'])
    print(f"Data statistics: {stats}")

    # Modify the DataFrame
    df['squared'] = df['values'] ** 2
    print(f"DataFrame shape: {df.shape}")
    "#,
    )
    .await;
    let out = ok(&r);
    assert!(out.contains("Data statistics: {'mean':"), "{out}");
    assert!(out.contains("'count': 1000"), "{out}");
    assert!(out.contains("DataFrame shape: (1000, 3)"), "{out}");
    let r = run(s.as_ref(), "print(list(df.columns))").await;
    assert_eq!(ok(&r).trim(), "['values', 'category', 'squared']");
    s.close().await.unwrap();
}

/// Classes, closures, generators and imports survive between runs; so does state
/// after a failed run.
pub async fn objects_persist(rt: &dyn SandboxRuntime) {
    let s = session(rt).await;
    ok(&run(
        s.as_ref(),
        "import math\nclass Counter:\n    def __init__(self):\n        self.n = 0\n    def inc(self):\n        self.n += 1\n        return self.n\nc = Counter()\ndef make_adder(k):\n    def add(x):\n        return x + k\n    return add\nadd5 = make_adder(5)\ngen = (i * i for i in range(10))",
    )
    .await);
    ok(&run(s.as_ref(), "c.inc(); c.inc()").await);
    let r = run(s.as_ref(), "raise RuntimeError('boom')").await;
    assert!(!r.success);
    let r = run(
        s.as_ref(),
        "print(c.inc(), add5(10), next(gen), next(gen), next(gen), math.floor(2.5), type(c).__name__)",
    )
    .await;
    assert_eq!(ok(&r).trim(), "3 15 0 1 4 2 Counter");
    s.close().await.unwrap();
}

/// The value of a last expression comes back as its repr.
pub async fn last_expression_value(rt: &dyn SandboxRuntime) {
    let s = session(rt).await;
    let r = run(s.as_ref(), "x = 20\nx * 2 + 2").await;
    ok(&r);
    assert_eq!(r.value.as_deref(), Some("42"));
    let r = run(s.as_ref(), "print('hi')").await;
    assert_eq!(r.value, None, "print returns None: no value");
    s.close().await.unwrap();
}

/// Any image with python3 hosts a session: here a bare Debian with python3 only (no
/// packages, no `sandbox` user, no /workspace in the image).
pub async fn any_python_image_hosts_a_session(rt: &dyn SandboxRuntime) {
    let config = crate::harness::config_builder(rt)
        .await
        .image("biocage-base:bookworm")
        .build()
        .unwrap();
    let s = rt.create_session(&config).await.unwrap();
    ok(&run(
        s.as_ref(),
        "import sys, os\nv = sys.version_info\nopen('note.txt', 'w').write('w')",
    )
    .await);
    let r = run(
        s.as_ref(),
        "print(v[0], os.getcwd(), open('note.txt').read(), os.getuid() != 0)",
    )
    .await;
    assert_eq!(ok(&r), "3 /workspace w True\n");
    let r = run(s.as_ref(), "import numpy").await;
    assert_eq!(
        r.error.as_ref().unwrap().name.as_deref(),
        Some("ModuleNotFoundError")
    );
    let r = crate::harness::run_for(s.as_ref(), "import time\ntime.sleep(10)", 0.5).await;
    assert_eq!(r.exit_code, 124);
    assert_eq!(ok(&run(s.as_ref(), "print(v[0])").await), "3\n");
    s.close().await.unwrap();
}
