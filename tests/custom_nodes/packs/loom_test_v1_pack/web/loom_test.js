// A frontend extension of the test pack (served at /extensions/loom_test_v1_pack/loom_test.js).
import { app } from "../../scripts/app.js";
app.registerExtension({ name: "loom.test.pack" });
